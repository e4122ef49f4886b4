"""A Vision Transformer trained from scratch on CIFAR: from a ~1M-parameter ViT to larger ones."""

from ray import tune

from search_spaces.base import Asha, SearchSpace

SPACE = SearchSpace(
    name="vit_scratch",
    description="ViT from scratch on CIFAR: patch, depth, width, heads, MLP dim, dropout, lr, wd, warmup",
    reproduces="ViT trained from scratch on CIFAR (a ~1M-parameter ViT: patch 4, dim 128, depth 6, and larger)",
    dataset="cifar100",
    fixed={
        "model": "vit_scratch", "opt": "adamw", "sched": "cosine", "batch_size": 128, "label_smoothing": 0.1,
        "crop_padding": 4, "hflip": True, "randaugment_magnitude": 9.0, "grad_clip": 1.0,
    },
    params={
        "vit_patch": tune.choice([2, 4, 8]),
        "vit_depth": tune.choice([4, 6, 8, 12]),
        "vit_dim": tune.choice([128, 192, 384]),
        "vit_heads": tune.choice([4, 8]),
        "vit_mlp_dim": tune.choice([256, 512, 768, 1536]),
        "drop_rate": tune.uniform(0.0, 0.2),
        "lr": tune.loguniform(1e-4, 3e-3),
        "weight_decay": tune.loguniform(1e-3, 0.1),
        "warmup_epochs": tune.randint(0, 11),
    },
    asha=Asha(grace_period=10, reduction_factor=3),
    num_samples=32,
    max_epochs=200,
    dataset_overrides={"digits": {"image_size": 16, "batch_size": 32, "vit_patch": tune.choice([2, 4]),
                                  "vit_depth": tune.choice([2, 4]), "vit_dim": tune.choice([64, 128]),
                                  "warmup_epochs": tune.randint(0, 2)}},
)
