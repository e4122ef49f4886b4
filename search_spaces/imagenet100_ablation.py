"""An image-folder (ImageNet-100) architecture ablation with AMP and early stopping, plus image size 64/128/224."""

from ray import tune

from search_spaces.base import Asha, SearchSpace

SPACE = SearchSpace(
    name="imagenet100_ablation",
    description="ImageNet-100 folder: ResNet-50, Swin-T, EfficientNet-B0, ViT-S, MobileNetV3 x image size x aug",
    reproduces="an ImageNet-100 study of ResNet-50, Swin-T, EfficientNet-B0, ViT and MobileNet with AMP and early "
               "stopping, and an image-size ablation (64/128/224)",
    dataset="folder",
    fixed={
        "opt": "adamw", "sched": "cosine", "warmup_epochs": 2, "batch_size": 128, "weight_decay": 0.05,
        "label_smoothing": 0.1, "amp": True, "patience": 5, "crop_padding": 8, "hflip": True,
        "randaugment_magnitude": 9.0,
    },
    params={
        "model": tune.choice(["resnet50_imagenet", "swin_t", "efficientnet_b0", "vit_s", "mobilenetv3"]),
        "image_size": tune.choice([64, 128, 224]),
        "augment": tune.choice([True, False]),
        "lr": tune.loguniform(1e-4, 3e-3),
    },
    asha=Asha(grace_period=5, reduction_factor=3),
    num_samples=30,
    max_epochs=60,
    folder_image_size=224,  # decoded once at the largest size; trials resize on their device
)
