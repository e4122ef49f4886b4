"""ResNet-34 from torchvision's ImageNet weights: feature extraction vs full fine-tuning."""

from ray import tune

from search_spaces.base import Asha, SearchSpace

SPACE = SearchSpace(
    name="resnet34_transfer",
    description="ResNet-34 from ImageNet weights: frozen backbone vs full fine-tuning, lr, wd, epochs",
    reproduces="ResNet-34 transfer learning from torchvision ImageNet weights: 94.1 top-1 on CIFAR-10 (fine-tuned)",
    dataset="cifar10",
    fixed={
        "model": "resnet34_imagenet", "image_size": 224, "opt": "sgd", "momentum": 0.9, "sched": "cosine",
        "batch_size": 128, "crop_padding": 4, "hflip": True,
    },
    params={
        "freeze_backbone": tune.choice([True, False]),
        "lr": tune.loguniform(1e-4, 1e-1),
        "weight_decay": tune.loguniform(1e-5, 1e-3),
        "max_epochs": tune.choice([5, 10, 15]),
    },
    asha=Asha(grace_period=2, reduction_factor=3),
    num_samples=12,
    max_epochs=15,
    requires={"pretrained": "--set pretrained=hub (torchvision downloads its resnet34 ImageNet weights) or "
                            "--set pretrained=PATH: that file, resnet34-b627a593.pth "
                            "(torchvision.models.ResNet34_Weights.IMAGENET1K_V1)"},
    dataset_overrides={"digits": {"image_size": 32, "batch_size": 32, "max_epochs": tune.choice([1, 2])}},
)
