"""Pretrain a small ViT on CIFAR-100, then fine-tune its best checkpoint on CIFAR-10; ResNet-18 on the same path."""

from ray import tune

from search_spaces.base import Asha, SearchSpace

_SMALL_VIT = {"vit_patch": 4, "vit_depth": 6, "vit_dim": 192, "vit_heads": 4, "vit_mlp_dim": 384}

STAGE2 = SearchSpace(
    name="vit_pretrain_finetune_stage2",
    description="stage 2 of vit_pretrain_finetune: fine-tune a stage-1 checkpoint on CIFAR-10",
    reproduces="ViT pretrained on CIFAR-100 fine-tuned on CIFAR-10: 65.0 top-1 (ResNet-18 on the same path 72.4)",
    dataset="cifar10",
    fixed={"opt": "adamw", "sched": "cosine", "batch_size": 128, "warmup_epochs": 1, "crop_padding": 4,
           "hflip": True, "label_smoothing": 0.1},
    params={
        "lr": tune.loguniform(1e-5, 1e-3),
        "weight_decay": tune.loguniform(1e-3, 0.1),
        "layer_decay": tune.choice([0.0, 0.75]),
    },
    asha=Asha(grace_period=2, reduction_factor=3),
    num_samples=8,
    max_epochs=30,
    requires={"pretrained": "--set pretrained=PATH: the stage-1 checkpoint.pt to fine-tune (vit_pretrain_finetune "
                            "sets it itself)"},
    dataset_overrides={"digits": {"image_size": 16, "batch_size": 32, "warmup_epochs": 0}},
)

SPACE = SearchSpace(
    name="vit_pretrain_finetune",
    description="stage 1: small ViT vs ResNet-18 on CIFAR-100; stage 2: fine-tune each best on CIFAR-10",
    reproduces="pretrain a small ViT on CIFAR-100, fine-tune on CIFAR-10: 65.0 top-1 vs ResNet-18's 72.4",
    dataset="cifar100",
    fixed={"opt": "adamw", "sched": "cosine", "batch_size": 128, "crop_padding": 4, "hflip": True,
           "label_smoothing": 0.1, "randaugment_magnitude": 9.0, **_SMALL_VIT},
    params={
        "model": tune.grid_search(["vit_scratch", "resnet18"]),  # both families, every time
        "lr": tune.loguniform(1e-4, 3e-3),
        "weight_decay": tune.loguniform(1e-3, 0.1),
        "warmup_epochs": tune.randint(0, 6),
    },
    search="random",  # a grid over the family x random samples of the rest
    asha=Asha(grace_period=5, reduction_factor=3),
    num_samples=8,  # per family
    max_epochs=100,
    dataset_overrides={"digits": {"image_size": 16, "batch_size": 32, "width": 0.25, "vit_depth": 2,
                                  "vit_dim": 64, "vit_mlp_dim": 128, "warmup_epochs": tune.randint(0, 2)}},
    then=STAGE2,
)
