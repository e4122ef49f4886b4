"""Where a trial's images live: resident on the device, or gathered on the host and copied per batch."""

import numpy as np
import torch

from trainables.placement import DeviceImages


def images(n=50):
    return np.random.default_rng(0).integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)


def test_resident_and_host_held_batches_are_the_same_rows():
    array = images()
    resident = DeviceImages(array, torch.device("cpu"))
    held = DeviceImages(array, torch.device("cpu"), resident=False)
    assert resident.resident and not held.resident and len(held) == 50
    for seed in range(4):  # alternating staging buffers, a short last batch
        idx = torch.randperm(50, generator=torch.Generator().manual_seed(seed))[:16 if seed < 3 else 7]
        a, b = resident.batch(idx), held.batch(idx)
        assert torch.equal(a, torch.from_numpy(array)[idx]) and torch.equal(a, b)


def test_host_held_batches_do_not_alias_the_staging_buffer():
    held = DeviceImages(images(), torch.device("cpu"), resident=False)
    first = held.batch(torch.arange(8))
    kept = first.clone()
    held.batch(torch.arange(8, 16))
    held.batch(torch.arange(16, 24))  # reuses the first buffer
    assert torch.equal(first, kept)


def test_training_on_host_held_images_matches_resident(monkeypatch):
    import trainables.classify as classify
    from trainables.config import TrialConfig
    from trainables.data import load_dataset

    data = load_dataset("digits").without_test()
    cfg = TrialConfig.from_dict(dict(model="cnn_basic", width=0.5, image_size=16, batch_size=64, max_epochs=1))
    resident = [m for m, _ in classify.train_epochs(cfg, data)]
    monkeypatch.setattr(classify, "DeviceImages", lambda array, device: DeviceImages(array, device, resident=False))
    held = [m for m, _ in classify.train_epochs(cfg, data)]
    for key in ("train_loss", "val_loss", "val_top1"):
        assert held[0][key] == resident[0][key], key
