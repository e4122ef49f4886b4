"""Accuracy under a deployment budget: small CNNs, ResNets, MobileNetV3 and ViTs at several widths and image sizes,
searched for validation top-1 and CPU latency at once, under a CPU latency budget (tuner.objectives)."""

from ray import tune

from search_spaces.base import Asha, SearchSpace

SPACE = SearchSpace(
    name="efficiency",
    description="accuracy vs CPU latency: cnn_basic/resnet18/mobilenetv3/vit widths and image sizes, latency<=5 ms",
    reproduces="a Pareto front of val top-1 vs measured batch-1 CPU latency (1 thread, eager) under a 5 ms budget",
    dataset="cifar10",
    fixed={"opt": "adamw", "batch_size": 128, "sched": "cosine", "warmup_epochs": 1.0, "hflip": True,
           "crop_padding": 4, "vit_patch": 4, "vit_depth": 4, "vit_heads": 4},
    params={
        "model": tune.choice(["cnn_basic", "resnet18", "mobilenetv3", "vit_scratch"]),
        "width": tune.choice([0.25, 0.5, 1.0]),  # the CIFAR nets' widths
        "vit_dim": tune.choice([64, 128, 192]),  # the ViT's (a knob a model is not built with is one footprint)
        "image_size": tune.choice([16, 24, 32]),
        "lr": tune.loguniform(5e-4, 5e-3),
        "weight_decay": tune.loguniform(1e-3, 1e-1),
    },
    search="optuna",
    asha=Asha(grace_period=2, reduction_factor=3),
    num_samples=32,
    max_epochs=20,
    objectives=("val_top1", "latency_ms"),
    constraints=("latency_ms<=5",),
    # digits: a quick, CPU-sized version (8x8 scans at 16 px, quarter and half widths, a 2-block ViT)
    dataset_overrides={"digits": {"width": tune.choice([0.25, 0.5]), "image_size": 16, "batch_size": 32,
                                  "vit_dim": 64, "vit_depth": 2, "warmup_epochs": 0.0}},
)
