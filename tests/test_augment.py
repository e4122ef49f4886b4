"""Batched augmentation: same semantics as torchvision's transforms, seeded, on tensors."""

import torch
import torchvision.transforms.v2.functional as TF

from trainables.augment import BatchAugment, random_crop, random_crop_flip, random_hflip


def images(n=16, size=8):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = images()
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = TF.pad(x, [2])
    for i in range(len(x)):  # every output is one of the 25 windows of its own padded image
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_random_crop_varies_per_image_and_is_seeded():
    x = images(64)
    a = random_crop(x, 4, torch.Generator().manual_seed(0))
    b = random_crop(x, 4, torch.Generator().manual_seed(0))
    c = random_crop(x, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a != x).flatten(1).any(1).sum() > 32  # most images moved


def test_hflip_flips_about_half():
    x = images(200)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert torch.all(flipped | same) and 60 < int(flipped.sum()) < 140


def test_fused_crop_flip_equals_crop_then_flip_image_by_image():
    """The one-gather crop+flip gives exactly torchvision's RandomCrop then RandomHorizontalFlip, per image."""
    x = images(33, 10)
    for seed in range(3):
        out = random_crop_flip(x, 3, True, torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)  # the same draws, in the documented order: dy, dx, flip
        dy, dx = torch.randint(0, 7, (33,), generator=g), torch.randint(0, 7, (33,), generator=g)
        flip = torch.rand(33, generator=g) < 0.5
        padded = TF.pad(x, [3])
        for i in range(len(x)):
            window = TF.crop(padded[i], int(dy[i]), int(dx[i]), 10, 10)
            assert torch.equal(out[i], TF.horizontal_flip(window) if flip[i] else window)
        assert 5 < int(flip.sum()) < 28


def test_crop_flip_without_padding_only_flips():
    x = images(40)
    out = random_crop_flip(x, 0, True, torch.Generator().manual_seed(0))
    assert all(torch.equal(o, i) or torch.equal(o, i.flip(2)) for o, i in zip(out, x))
    assert not torch.equal(out, x)


def test_normalize_leaves_a_float_input_untouched():
    x = images().float()
    before = x.clone()
    BatchAugment((0.5,) * 3, (0.2,) * 3).normalize(x)
    assert torch.equal(x, before)


def test_normalize_matches_torchvision():
    x = images()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ours = BatchAugment(mean, std).normalize(x)
    theirs = TF.normalize(x.float() / 255, list(mean), list(std))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_resize_on_device():
    out = BatchAugment((0.5,) * 3, (0.5,) * 3, image_size=16)(images(4, 32), torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
