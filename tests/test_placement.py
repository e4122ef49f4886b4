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


def test_host_held_images_are_never_copied(tmp_path):
    """Streaming from host memory gathers each batch into a staging buffer: the array itself (the memory-mapped
    cache, whose pages every trial on the node shares) is used in place, never copied whole, pinned or not."""
    np.save(tmp_path / "x.npy", images())
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    for resident in (None, False):
        held = DeviceImages(mapped, torch.device("cpu"), resident=resident)
        assert held.images.data_ptr() == mapped.ctypes.data
        assert torch.equal(held.batch(torch.arange(3)), torch.from_numpy(np.array(mapped[:3])))


def test_data_stay_on_the_gpu_only_when_every_packed_trial_fits(monkeypatch):
    from trainables import placement

    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * gib, 80 * gib))
    device = torch.device("cuda")
    # 4 trials per GPU (20 GiB each), a step peaking at 12 GiB: 6 GiB of data fit with it, 9 GiB do not
    placement.set_trial_budget(gpu_fraction=0.25, step_gpu_bytes=12 * gib)
    assert placement.fits_on_gpu(6 * gib, device) and not placement.fits_on_gpu(3 * gib, device)  # 6 + 3 > 8
    placement.set_trial_budget(gpu_fraction=0.25, step_gpu_bytes=12 * gib)
    assert not placement.fits_on_gpu(9 * gib, device)
    # no measured step: at most a quarter of the trial's share (here 5 GiB of its 20)
    placement.set_trial_budget(gpu_fraction=0.25)
    assert placement.fits_on_gpu(5 * gib, device) and not placement.fits_on_gpu(1, device)
    placement.set_trial_budget()  # outside Ray: the whole GPU is this process's
    assert placement.fits_on_gpu(17 * gib, device)
    placement.set_trial_budget()
