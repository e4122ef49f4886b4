"""The CIFAR-10 grid of 864 runs: model x lr x weight decay x gamma x scheduler x augmentation, each cell once."""

from ray import tune

from search_spaces.base import SearchSpace

SPACE = SearchSpace(
    name="cnn_grid",
    description="CIFAR-10 grid of 864 runs: CNN/ResNet/ViT x lr x wd x gamma x scheduler x augmentation",
    reproduces="the CIFAR-10 grid study (864 runs on SLURM): best CNN 86.97, ResNet 84.22, ViT 83.50 top-1",
    dataset="cifar10",
    fixed={
        "opt": "adamw", "batch_size": 128, "step_epochs": 10,
        # "augmentation on" in the study: flip, 15-degree rotation, crop with 4-px padding
        "hflip": True, "rotation": 15.0, "crop_padding": 4,
        "patience": 5, "val_every": 1,  # early stopping on validation, checked every epoch
        "vit_patch": 4, "vit_depth": 6, "vit_dim": 192, "vit_heads": 4,
    },
    params={
        "model": tune.grid_search(["cnn_basic", "resnet18", "vit_scratch"]),
        "lr": tune.grid_search([1e-2, 1e-3, 1e-4, 1e-5]),
        "weight_decay": tune.grid_search([1e-2, 1e-3, 1e-4, 1e-5]),
        "gamma": tune.grid_search([0.95, 0.97, 0.99]),
        "sched": tune.grid_search(["exponential", "step", "cosine"]),
        "augment": tune.grid_search([False, True]),
    },
    search="grid",
    asha=None,  # every cell runs to its budget or its early stop, as in the study
    num_samples=1,  # each cell once
    max_epochs=50,
    dataset_overrides={"digits": {"width": 0.25, "image_size": 16, "batch_size": 32, "vit_dim": 64,
                                  "vit_depth": 2}},
)
