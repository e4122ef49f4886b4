"""ViT-B/16 and DeiT-tiny fine-tuned from pretrained weights at 224 px."""

from ray import tune

from search_spaces.base import Asha, SearchSpace

SPACE = SearchSpace(
    name="vit_finetune",
    description="ViT-B/16 or DeiT-tiny fine-tuned at 224 px: lr, layer decay or frozen backbone, epochs, augmentation",
    reproduces="ViT-B/16 fine-tuned at 224 px: 85.6 top-1 on CIFAR-100; CIFAR-10: ViT-B/16 94.6, DeiT-tiny 87.3",
    dataset="cifar10",
    fixed={
        "image_size": 224, "opt": "adamw", "sched": "cosine", "warmup_epochs": 1, "batch_size": 64,
        "weight_decay": 0.05, "label_smoothing": 0.1, "crop_padding": 4, "hflip": True, "grad_clip": 1.0,
    },
    params={
        "model": tune.choice(["vit_b", "deit_tiny"]),
        "lr": tune.loguniform(1e-5, 1e-3),
        "layer_decay": tune.choice([0.0, 0.65, 0.75, 0.85]),
        "freeze_backbone": tune.choice([False, True]),
        "max_epochs": tune.choice([3, 5, 10]),
        "randaugment_magnitude": tune.choice([0.0, 9.0]),
    },
    asha=Asha(grace_period=1, reduction_factor=3),
    num_samples=16,
    max_epochs=10,
    requires={"pretrained": "--set pretrained=hub (timm downloads its vit_base_patch16_224 / deit_tiny_patch16_224 "
                            "weights) or --set pretrained=PATH: a weights file, or a folder holding vit_b.safetensors "
                            "and deit_tiny.safetensors"},
    # digits: DeiT-tiny at 32 px (2x2 patches) keeps the path testable on a CPU.
    dataset_overrides={"digits": {"model": "deit_tiny", "image_size": 32, "batch_size": 32,
                                  "max_epochs": tune.choice([1, 2])}},
)
