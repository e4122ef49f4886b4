"""The two places a trial's images live give the same batches: resident on the device, or in host memory gathered
into pinned staging buffers and copied asynchronously (trainables.placement.DeviceImages), for the same seed."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.helpers import generated, needs_cuda, relative, trial_epochs

pytestmark = pytest.mark.gpu

SAME_LOSS_RTOL = 1e-4  # the same batches; only a few cuDNN backward kernels sum floats in a varying order


@pytest.mark.parametrize("repeats", [1, 3])
def test_resident_and_pinned_paths_give_identical_batches(repeats, device, record_property):
    from trainables.classify import epoch_order
    from trainables.placement import DeviceImages

    cuda = device.type == "cuda"
    n, batch = (4096, 256) if cuda else (512, 64)
    images = generated(n).train_x
    resident, staged = DeviceImages(images, device, resident=True), DeviceImages(images, device, resident=False)
    assert resident.resident and not staged.resident
    order = epoch_order(n, repeats, torch.Generator(device=device).manual_seed(7), device)
    host_order = order.cpu()  # what train_epochs hands the host-held path
    starts = range(0, n - batch + 1, batch)
    # every staged batch is kept until the end: a staging buffer reused too early would show as a changed batch
    on_device = [resident.batch(order[s:s + batch]) for s in starts]
    through_staging = [staged.batch(host_order[s:s + batch]) for s in starts]
    assert all(b.device.type == device.type for b in through_staging)
    same = sum(torch.equal(a, b) for a, b in zip(on_device, through_staging))
    record_property("identical_batches", f"{same} of {len(on_device)}")
    assert same == len(on_device)


def test_train_epochs_gives_the_same_losses_with_data_resident_or_pinned(device, monkeypatch, record_property):
    needs_cuda(device, "on a CPU the images always stay where they are (one path)")
    from trainables import placement

    data = generated(2048, 512)
    config = {"model": "cnn_basic", "batch_size": 256, "max_epochs": 2, "seed": 0}
    resident = trial_epochs(config, data, device)
    asked = []
    monkeypatch.setattr(placement, "fits_on_gpu", lambda nbytes, dev: asked.append(nbytes) or False)
    pinned = trial_epochs(config, data, device)
    assert asked, "the data placement was not asked: the pinned path did not run"
    worst = max(relative(p[k], r[k]) for p, r in zip(pinned, resident) for k in ("train_loss", "val_loss"))
    record_property("worst_relative_difference", f"{worst:.2e} (tolerance {SAME_LOSS_RTOL})")
    assert worst <= SAME_LOSS_RTOL
