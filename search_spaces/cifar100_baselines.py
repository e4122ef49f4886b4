"""VGG-16 and ResNet-50 baselines on CIFAR-100: SGD, lr 0.01, weight decay 2e-4, CutMix, batch 128."""

from ray import tune

from search_spaces.base import Asha, SearchSpace

SPACE = SearchSpace(
    name="cifar100_baselines",
    description="VGG-16-BN vs ResNet-50 on CIFAR-100: SGD + CutMix around the published recipe",
    reproduces="CIFAR-100 baselines with SGD lr 0.01, wd 2e-4, CutMix, batch 128: VGG-16 75.4 / ResNet-50 79.2 top-1",
    dataset="cifar100",
    fixed={
        "opt": "sgd", "momentum": 0.9, "nesterov": True, "batch_size": 128, "sched": "cosine",
        "cutmix_alpha": 1.0, "crop_padding": 4, "hflip": True,
    },
    params={
        "model": tune.choice(["vgg16_bn", "resnet50"]),
        "lr": tune.loguniform(3e-3, 3e-2),  # centred on the reported 0.01
        "weight_decay": tune.loguniform(5e-5, 1e-3),  # centred on the reported 2e-4
        "mix_prob": tune.uniform(0.0, 1.0),  # the CutMix probability
    },
    asha=Asha(grace_period=10, reduction_factor=3),
    num_samples=16,
    max_epochs=200,
    # digits: quarter width; 32 px kept, VGG's five pools need it
    dataset_overrides={"digits": {"width": 0.25, "batch_size": 32}},
)
