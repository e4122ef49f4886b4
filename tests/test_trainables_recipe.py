"""Trial-config knobs of the training recipe: batched augmentation, validation cadence and early stopping,
the model registry, and pretrained weights from local files. Plain pytest, CPU, no Ray."""

from __future__ import annotations

import copy
import math
import os
import re
import sys
import types

import numpy as np
import pytest
import torch

from trainables.augment import (BatchAugment, randaugment_chunks, random_crop, random_erase, random_hflip,
                                random_rotate)
from trainables.classify import (build_model, epoch_order, load_checkpoint_model, save_atomic, train_classifier,
                                 train_epochs)
from trainables.config import TrialConfig
from trainables.data import ImageSplits
from trainables.errors import UserError
from trainables.models import (classifier_name, create_model, freeze_backbone, list_models, load_pretrained)
from trainables.recipe import create_recipe

CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids oversubscribing a shared CI box
    yield
    torch.set_num_threads(threads)


def _images(n=32, size=16, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _splits(n_train=64, n_val=32, size=16, classes=4) -> ImageSplits:
    rng = np.random.default_rng(0)
    return ImageSplits(
        name="synthetic", classes=tuple(str(i) for i in range(classes)),
        train_x=rng.integers(0, 256, (n_train, 3, size, size), dtype=np.uint8),
        train_y=rng.integers(0, classes, n_train).astype(np.int64),
        val_x=rng.integers(0, 256, (n_val, 3, size, size), dtype=np.uint8),
        val_y=rng.integers(0, classes, n_val).astype(np.int64),
        test_x=None, test_y=None, mean=MEAN, std=STD)


_RA = BatchAugment(MEAN, STD, randaugment_magnitude=9).randaugment

AUGMENTS = {
    "crop": lambda x, g: random_crop(x, 4, g),
    "hflip": lambda x, g: random_hflip(x, g),
    "rotation": lambda x, g: random_rotate(x, 30.0, g),
    "randaugment": lambda x, g: randaugment_chunks(x, _RA, g),
    "erasing": lambda x, g: random_erase(x.float(), 1.0, g),
    "all": BatchAugment(MEAN, STD, crop_padding=2, rotation=15, randaugment_magnitude=9, random_erasing=0.5,
                        image_size=24),
}


# ---------------------------------------------------------------- augmentation

@pytest.mark.parametrize("name", AUGMENTS)
def test_augment_is_seeded_by_the_generator(name):
    x = _images()
    first = AUGMENTS[name](x, _gen(1))
    again = AUGMENTS[name](x, _gen(1))
    other = AUGMENTS[name](x, _gen(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    if first.shape == x.shape:
        assert not torch.equal(first, x.to(first.dtype))  # it did something


@pytest.mark.parametrize("name", AUGMENTS)
def test_augment_draws_new_randomness_on_every_call(name):
    x, g = _images(), _gen(3)
    assert not torch.equal(AUGMENTS[name](x, g), AUGMENTS[name](x, g))


def test_augment_shapes_and_dtypes():
    x = _images(n=16, size=16)
    for fn in (lambda: random_rotate(x, 20.0, _gen(0)), lambda: randaugment_chunks(x, _RA, _gen(0))):
        out = fn()
        assert out.dtype == torch.uint8 and out.shape == x.shape
    assert random_rotate(x.float(), 20.0, _gen(0)).dtype == torch.float32
    erased = random_erase(torch.randn(16, 3, 16, 16), 0.5, _gen(0))
    assert erased.dtype == torch.float32 and erased.shape == (16, 3, 16, 16)
    out = AUGMENTS["all"](x, _gen(0))
    assert out.dtype == torch.float32 and out.shape == (16, 3, 24, 24)


def test_default_batch_augment_is_unchanged():
    """No new knob set: crop, flip and normalise exactly as before, drawing the same random numbers."""
    x = _images()
    aug = BatchAugment(MEAN, STD)
    g = _gen(5)
    expected = random_hflip(random_crop(x, 4, g), g).float() * aug.scale + aug.shift
    assert torch.equal(aug(x, _gen(5)), expected)


def test_rotation_by_zero_is_identity():
    x = _images()
    assert torch.equal(random_rotate(x, 0.0, _gen(0)), x)
    xf = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(random_rotate(xf, 0.0, _gen(0)), xf, atol=1e-5, rtol=0)


def test_rotation_turns_about_the_centre():
    """An odd-sized image's centre pixel stays put; a 90-degree turn of a 1-pixel dot lands where rot90 puts it."""
    x = _images(n=8, size=15).float()
    out = random_rotate(x, 180.0, _gen(0))
    torch.testing.assert_close(out[..., 7, 7], x[..., 7, 7], atol=1e-3, rtol=0)
    assert not torch.allclose(out, x)
    # a dot 5 pixels from the centre, turned by random angles: its centre of mass stays 5 pixels out (a rigid turn)
    dot = torch.zeros(64, 1, 15, 15)
    dot[:, :, 7, 12] = 255.0  # 5 pixels right of the centre
    turned = random_rotate(dot, 180.0, _gen(1))
    ys, xs = torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij")
    mass = turned.sum(dim=(1, 2, 3))
    cy = (turned[:, 0] * ys).sum(dim=(1, 2)) / mass
    cx = (turned[:, 0] * xs).sum(dim=(1, 2)) / mass
    radius = ((cy - 7) ** 2 + (cx - 7) ** 2).sqrt()
    assert torch.allclose(radius, torch.full_like(radius, 5.0), atol=0.6)
    assert (cy - 7).abs().max() > 3  # the angles really vary


def test_erasing_prob_zero_is_identity_and_prob_one_erases_one_box_per_image():
    x = torch.randn(32, 3, 20, 20)
    original = x.clone()
    assert torch.equal(random_erase(x, 0.0, _gen(0)), x)
    out = random_erase(x, 1.0, _gen(0))
    changed = (out != x).any(dim=1)  # (B, H, W)
    for mask in changed:
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert mask.sum() == box  # one filled rectangle
        assert 0.01 * 400 <= box <= 0.4 * 400  # timm's area range 2%..33%, up to rounding of the sides
    assert torch.equal(x, original)  # not erased in place


def test_erasing_rate_follows_probability():
    x = torch.zeros(2000, 1, 8, 8)
    erased = (random_erase(x, 0.25, _gen(0)) != 0).flatten(1).any(dim=1).float().mean().item()
    assert 0.2 < erased < 0.3


def test_randaugment_changes_images_and_chunks_differ():
    x = _images(n=64)
    out = randaugment_chunks(x, _RA, _gen(0))
    assert not torch.equal(out, x)
    assert BatchAugment(MEAN, STD, randaugment_magnitude=0).randaugment is None
    ra = BatchAugment(MEAN, STD, randaugment_magnitude=9, randaugment_ops=3).randaugment
    assert ra.num_ops == 3 and ra.magnitude == 90 and ra.num_magnitude_bins == 301


def test_randaugment_magnitude_noise_draws_a_seeded_magnitude_per_chunk():
    from torchvision.transforms import v2

    seen = []

    class Recording(v2.RandAugment):
        def forward(self, *inputs):
            seen.append(self.magnitude)
            return super().forward(*inputs)

    ra = Recording(num_ops=2, magnitude=90, num_magnitude_bins=301)
    x = _images(n=64)
    first = randaugment_chunks(x, ra, _gen(0), magnitude=9.0, magnitude_std=1.5)
    draws = list(seen)
    assert len(draws) == 8 and len(set(draws)) > 4 and all(0 <= m <= 300 for m in draws)
    assert 60 < sum(draws) / len(draws) < 120  # around 9 (x 10 bins) with std 1.5
    seen.clear()
    assert torch.equal(randaugment_chunks(x, ra, _gen(0), magnitude=9.0, magnitude_std=1.5), first)
    assert seen == draws  # the same generator state, the same magnitudes
    seen.clear()
    randaugment_chunks(x, ra, _gen(0), magnitude=9.0)
    assert seen == [draws[-1]] * 8  # no noise: the magnitude is left as it is


# ---------------------------------------------------------------- validation cadence and early stopping

def _cfg(**overrides) -> TrialConfig:
    base = dict(model="vit_scratch", vit_patch=4, vit_dim=32, vit_heads=2, vit_depth=1, batch_size=32, max_epochs=6,
                crop_padding=0, hflip=False, amp=False, channels_last=False, seed=0, weight_decay=0.0)
    return TrialConfig.from_dict({**base, **overrides})


def test_patience_stops_a_run_that_does_not_improve():
    # lr at its floor and LayerNorm only (no BN running statistics): validation predictions never change
    history = [m for m, _ in train_epochs(_cfg(lr=1e-8, patience=2, max_epochs=10), _splits(), device=CPU)]
    tops = [m["val_top1"] for m in history]
    assert len(set(tops)) == 1  # the premise: no improvement after the first validation
    assert [m["epoch"] for m in history] == [1, 2, 3]  # best at 1, then 2 validations without a new best
    assert [m["early_stopped"] for m in history] == [False, False, True]


def test_patience_off_runs_every_epoch():
    history = [m for m, _ in train_epochs(_cfg(lr=1e-8, max_epochs=3), _splits(), device=CPU)]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert not any(m["early_stopped"] for m in history)


def test_val_every_skips_validation_but_keeps_the_last_values():
    history = [m for m, _ in train_epochs(_cfg(lr=1e-3, val_every=2, max_epochs=5), _splits(), device=CPU)]
    assert [m["validated"] for m in history] == [False, True, False, True, True]  # and always the last epoch
    assert all(set(m) == set(history[0]) for m in history)  # the same columns every epoch
    assert math.isnan(history[0]["val_top1"])  # nothing measured yet
    for key in ("val_loss", "val_top1", "val_top5"):
        assert history[2][key] == history[1][key]  # epoch 3 repeats epoch 2's measurement
        assert math.isfinite(history[4][key])
    assert history[4]["val_loss"] != history[3]["val_loss"]  # the last epoch measured anew
    assert all(math.isfinite(m["train_loss"]) for m in history) and history[0]["lr"] > 0


def test_resume_keeps_the_patience_count(tmp_path):
    cfg, data = _cfg(lr=1e-8, patience=2, max_epochs=10), _splits()
    states = [copy.deepcopy(state()) for _, state in train_epochs(cfg, data, device=CPU)]
    resumed = [m for m, _ in train_epochs(cfg, data, device=CPU, resume_from=states[1])]
    assert [m["epoch"] for m in resumed] == [3] and resumed[0]["early_stopped"]
    save_atomic(states[-1], str(tmp_path / "checkpoint.pt"))
    model, loaded_cfg = load_checkpoint_model(str(tmp_path))
    assert loaded_cfg.vit_dim == 32 and model(torch.rand(2, 3, 16, 16)).shape == (2, 4)


def test_ray_trainable_checkpoints_only_validated_epochs(monkeypatch):
    """A checkpoint is ranked by its val_top1, so epochs that repeat an older measurement report without one."""
    reports = []
    fake_tune = types.SimpleNamespace(
        get_checkpoint=lambda: None,
        Checkpoint=types.SimpleNamespace(from_directory=lambda path: sorted(os.listdir(path))),
        report=lambda metrics, checkpoint=None: reports.append((metrics, checkpoint)))
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(tune=fake_tune))
    train_classifier(_cfg(val_every=2, max_epochs=3).to_dict(), _splits())
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert [c for _, c in reports] == [None, ["checkpoint.pt"], ["checkpoint.pt"]]


def test_augmentation_knobs_train_end_to_end():
    cfg = _cfg(model="cnn_basic", width=0.25, lr=1e-3, max_epochs=1, crop_padding=2, hflip=True, rotation=15,
               randaugment_magnitude=9, random_erasing=0.25)
    (metrics, _), = list(train_epochs(cfg, _splits(), device=CPU))
    assert metrics["validated"] and math.isfinite(metrics["train_loss"]) and 0 <= metrics["val_top1"] <= 100


def test_repeated_augmentation_order():
    order = epoch_order(10, 3, _gen(0), CPU)
    assert len(order) == 10 and order.tolist()[:9:3] == order.tolist()[1:9:3] == order.tolist()[2:9:3]
    assert len(set(order.tolist())) == 4  # ceil(10 / 3) images, each up to 3 times in a row
    assert sorted(epoch_order(10, 1, _gen(0), CPU).tolist()) == list(range(10))  # off: a plain permutation
    assert torch.equal(epoch_order(10, 3, _gen(1), CPU), epoch_order(10, 3, _gen(1), CPU))


def test_repeated_augmentation_trains_and_augments_each_copy_differently():
    cfg = _cfg(model="cnn_basic", width=0.25, lr=1e-3, max_epochs=1, repeat_aug=3, crop_padding=2)
    (metrics, _), = list(train_epochs(cfg, _splits(), device=CPU))
    assert math.isfinite(metrics["train_loss"]) and metrics["images_per_s"] > 0
    copies = _images(1).repeat(3, 1, 1, 1)
    out = BatchAugment(MEAN, STD, crop_padding=4)(copies, _gen(0))
    assert not torch.equal(out[0], out[1]) or not torch.equal(out[1], out[2])


# ---------------------------------------------------------------- models

FAST_MODELS = [n for n in list_models() if n not in ("timm/<name>", "module:factory", "swin_t", "vit_b", "vit_s")]
SLOW_MODELS = ["swin_t", "vit_s", "vit_b"]
SMALL = dict(width=0.25, vit_dim=32, vit_heads=2, vit_depth=2)


def test_registry_lists_the_new_models():
    for name in ("vgg16_bn", "vit_scratch", "resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet", "swin_t",
                 "efficientnet_b0", "mobilenetv3", "deit_tiny", "vit_s", "vit_b"):
        assert name in list_models()


@pytest.mark.parametrize("name", FAST_MODELS)
def test_model_trains_at_32px(name):
    torch.manual_seed(0)
    model = create_model(name, 7, image_size=32, **SMALL)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    first = next(p for p in model.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", SLOW_MODELS)
def test_big_timm_transformers_build_at_the_trial_image_size(name):
    """Slow to build on CPU, so one forward pass only (at 32 px these nets see very few tokens)."""
    model = create_model(name, 7, image_size=32)
    assert tuple(model.patch_embed.img_size) == (32, 32)
    assert model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_timm_prefix_still_works_and_passes_image_size():
    vit = create_model("timm/vit_tiny_patch16_224", 3, image_size=64)
    assert tuple(vit.patch_embed.img_size) == (64, 64) and vit(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    conv = create_model("timm/resnet10t", 3, image_size=64)  # takes no img_size: built without it
    assert conv(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(UserError, match="no model"):
        create_model("timm/not_a_model", 3)


def test_vgg16_bn_is_the_vgg16_stack_scaled_by_width():
    convs = [m for m in create_model("vgg16_bn", 10, width=0.25).modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    full = [m for m in create_model("vgg16_bn", 10).modules() if isinstance(m, torch.nn.Conv2d)]
    assert full[-1].out_channels == 512


def test_vit_scratch_is_shaped_by_its_knobs():
    vit = create_model("vit_scratch", 10, image_size=32, vit_patch=8, vit_depth=3, vit_dim=48, vit_heads=4,
                       vit_mlp_dim=100)
    assert len(vit.blocks) == 3 and vit.embed_dim == 48 and vit.blocks[0].attn.num_heads == 4
    assert vit.blocks[0].mlp.fc1.out_features == 100 and vit.patch_embed.num_patches == 16
    assert create_model("vit_scratch", 10, vit_dim=64, vit_heads=2).blocks[0].mlp.fc1.out_features == 256
    with pytest.raises(UserError, match="vit_patch"):
        create_model("vit_scratch", 10, image_size=30, vit_patch=4)
    with pytest.raises(UserError, match="vit_heads"):
        create_model("vit_scratch", 10, vit_dim=50, vit_heads=3)


def test_build_model_uses_the_data_image_size_for_vit():
    data = _splits(size=16)
    history = list(train_epochs(_cfg(max_epochs=1, vit_patch=8), data, device=CPU))
    assert history[0][1]()["image_size"] == 16
    model = build_model(_cfg(image_size=24), 4, CPU, 24)
    assert model.patch_embed.num_patches == 36


# ---------------------------------------------------------------- pretrained weights, freezing, layer decay

def _pretrained_cfg(path, **overrides) -> TrialConfig:
    return TrialConfig.from_dict({"model": "resnet18", "width": 0.25, "pretrained": str(path), **overrides})


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_pretrained_round_trip_reinitialises_a_head_of_another_size(tmp_path, fmt):
    torch.manual_seed(1)
    source = create_model("resnet18", 10, width=0.25)
    state = source.state_dict()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    torch.manual_seed(2)
    model = build_model(_pretrained_cfg(path), 5, CPU, 32)
    loaded = model.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert len(backbone) > 50
    assert all(torch.equal(loaded[k], state[k]) for k in backbone)
    assert loaded["fc.weight"].shape == (5, state["fc.weight"].shape[1])
    torch.manual_seed(2)
    fresh = create_model("resnet18", 5, width=0.25)
    assert torch.equal(loaded["fc.weight"], fresh.state_dict()["fc.weight"])  # the fresh head, not a copy
    assert not torch.equal(loaded["conv1.weight"], fresh.state_dict()["conv1.weight"])
    # the same class count loads the head too
    same = build_model(_pretrained_cfg(path), 10, CPU, 32)
    assert torch.equal(same.state_dict()["fc.weight"], state["fc.weight"])


def test_pretrained_torchvision_resnet_and_wrapped_checkpoint(tmp_path):
    source = create_model("resnet18_imagenet", 10)
    path = tmp_path / "tv.pth"
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}  # old files
    torch.save({"model": state, "epoch": 3}, path)  # a trial checkpoint wraps the state dict
    model = create_model("resnet18_imagenet", 3)
    assert load_pretrained(model, str(path)) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.out_features == 3


def test_pretrained_vgg_weights_into_resnet_is_a_user_error(tmp_path):
    path = tmp_path / "vgg.pt"
    torch.save(create_model("vgg16_bn", 10, width=0.25).state_dict(), path)
    with pytest.raises(UserError) as err:
        build_model(_pretrained_cfg(path), 10, CPU, 32)
    message = str(err.value)
    assert str(path) in message and "missing" in message and "unexpected" in message and "\n" not in message


def test_pretrained_wrong_width_is_a_user_error(tmp_path):
    path = tmp_path / "wide.safetensors"
    from safetensors.torch import save_file

    save_file(create_model("resnet18", 10, width=0.5).state_dict(), str(path))
    with pytest.raises(UserError, match="wrong-shape"):
        build_model(_pretrained_cfg(path), 10, CPU, 32)


def test_pretrained_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_model(_pretrained_cfg(tmp_path / "nope.pt"), 10, CPU, 32)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(UserError, match="does not hold a state dict"):
        build_model(_pretrained_cfg(tensor), 10, CPU, 32)
    for name in ("garbage.safetensors", "garbage.pt"):
        garbage = tmp_path / name
        garbage.write_bytes(b"not a tensor file at all")
        with pytest.raises(UserError, match="unreadable"):
            build_model(_pretrained_cfg(garbage), 10, CPU, 32)
    pickled = tmp_path / "code.pt"
    torch.save({"fn": TrialConfig()}, pickled)  # an arbitrary object: refused by weights_only
    with pytest.raises(UserError, match=re.escape(str(pickled)) + ".*TrialConfig.*state_dict"):
        build_model(_pretrained_cfg(pickled), 10, CPU, 32)


def test_pretrained_vit_is_resampled_to_the_trial_image_size(tmp_path):
    """timm's own checkpoint filter adapts position embeddings to another image size, as timm's loader does."""
    source = create_model("vit_scratch", 10, image_size=32, vit_patch=4, vit_dim=32, vit_heads=2, vit_depth=1)
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)
    model = create_model("vit_scratch", 10, image_size=16, vit_patch=4, vit_dim=32, vit_heads=2, vit_depth=1)
    load_pretrained(model, str(path))
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model.pos_embed.shape == (1, 17, 32)


def test_freeze_backbone_trains_only_the_head():
    cfg = TrialConfig.from_dict({"model": "resnet18", "width": 0.25, "freeze_backbone": True, "lr": 0.1,
                                 "batch_size": 32, "max_epochs": 1, "amp": False, "channels_last": False})
    torch.manual_seed(cfg.seed)  # the initial weights train_epochs will build
    model = build_model(cfg, 4, CPU, 16)
    head = classifier_name(model)
    assert head == "fc"
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    assert frozen["fc.weight"] and frozen["fc.bias"]
    assert not any(v for n, v in frozen.items() if not n.startswith("fc."))
    recipe = create_recipe(model, cfg, 4, 2)
    assert sum(len(g["params"]) for g in recipe.optimizer.param_groups) == 2

    before = {k: v.clone() for k, v in model.state_dict().items()}
    (_, state), = list(train_epochs(cfg, _splits(), device=CPU))
    after = state()["model"]
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    # weights and BN running statistics of the backbone stay as they were
    assert all(torch.equal(after[k], before[k]) for k in before if not k.startswith("fc."))


def test_freeze_backbone_on_models_without_fc():
    for name in ("cnn_basic", "vgg16_bn", "vit_scratch"):
        model = create_model(name, 4, **SMALL)
        freeze_backbone(model)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert len(trainable) == 2 and all(n.startswith(classifier_name(model) + ".") for n in trainable)


@pytest.mark.parametrize("name", ["resnet18", "cnn_basic", "vit_scratch"])
def test_layer_decay_scales_the_lr_of_earlier_layers(name):
    model = create_model(name, 4, **SMALL)
    cfg = TrialConfig.from_dict({"model": name, "lr": 0.01, "layer_decay": 0.5, "warmup_epochs": 1})
    recipe = create_recipe(model, cfg, 4, updates_per_epoch=10)
    scales = sorted({g["lr_scale"] for g in recipe.optimizer.param_groups})
    assert len(scales) >= 3 and scales[-1] == 1.0 and scales[0] < 0.3
    recipe.scheduler.step_update(10)  # end of warmup: the head at the full lr, the rest scaled
    for group in recipe.optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.01 * group["lr_scale"], rel=1e-3)
    off = create_recipe(model, TrialConfig.from_dict({"model": name}), 4, updates_per_epoch=10)
    assert all("lr_scale" not in g for g in off.optimizer.param_groups)


# ---------------------------------------------------------------- config

def test_new_knobs_default_to_off():
    cfg = TrialConfig()
    assert (cfg.rotation, cfg.randaugment_magnitude, cfg.random_erasing) == (0.0, 0.0, 0.0)
    assert (cfg.patience, cfg.val_every, cfg.pretrained, cfg.freeze_backbone, cfg.layer_decay) == (0, 1, "", False,
                                                                                                   0.0)
    assert TrialConfig.from_dict({"randaugment_ops": "3", "freeze_backbone": "true"}).randaugment_ops == 3
    for bad in ({"randaugment_magnitude": 31}, {"val_every": 0}, {"random_erasing": 1.5}, {"layer_decay": 2},
                {"patience": -1}, {"vit_heads": 0}):
        with pytest.raises(UserError):
            TrialConfig.from_dict(bad)
