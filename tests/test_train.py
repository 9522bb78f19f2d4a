"""Training: the recipe's pieces, fine-tuning, frozen batch norm, checkpoints and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from deeplab_geo.cli import main
from deeplab_geo.config import TrainConfig, load_train_config, updated
from deeplab_geo.datasets import SegmentationDataset
from deeplab_geo.errors import CheckpointError, ConfigError
from deeplab_geo.models.checkpoint import load_checkpoint
from deeplab_geo.tools.train import (
    CropSampler,
    apply_init,
    freeze_batch_norm,
    load_init,
    make_optimizer,
    poly_lr,
    train,
)
from tests.test_datasets import make_chips_scene, make_voc


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


class Arrays(SegmentationDataset):
    def __init__(self, samples):
        self.samples = samples
        self.name = "arrays"

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def test_poly_schedule():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0


def test_crop_sampler_scales_then_pads_with_mean_and_ignore():
    image = np.full((3, 10, 12), 100, np.uint8)
    labels = np.ones((10, 12), np.uint8)
    sampler = CropSampler(Arrays([(image, labels)]), 16, (1.0, 1.0), "hflip",
                          fill=[1.0, 2.0, 3.0])
    img, lab = sampler.sample(np.random.default_rng(0))
    assert img.shape == (3, 16, 16) and lab.shape == (16, 16) and lab.dtype == torch.int64
    assert (lab == 1).sum() == 10 * 12 and (lab == 255).sum() == 16 * 16 - 10 * 12
    assert set(img[:, lab == 1].unique().tolist()) == {100.0}
    assert set(img[0][lab == 255].unique().tolist()) == {1.0}
    # scale 2 on a big image: a 4 px window becomes the 8 px crop, nothing padded
    big = np.arange(64 * 64, dtype=np.uint8).reshape(1, 64, 64)
    zoom = CropSampler(Arrays([(big, np.zeros((64, 64), np.uint8))]), 8, (2.0, 2.0),
                       "dihedral", fill=[0.0])
    img, lab = zoom.sample(np.random.default_rng(1))
    assert img.shape == (1, 8, 8) and (lab == 0).all()


def test_optimizer_groups_and_frozen_batch_norm(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    model.train()
    frozen = freeze_batch_norm(model)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert frozen > 0 and not bn.training and not bn.weight.requires_grad
    config = TrainConfig.model_validate({
        "data": {"train_seeds": [1]}, "output": "m.safetensors",
        "train": {"head_lr_multiplier": 10}})
    optimizer = make_optimizer(model, config.train)
    assert [g["lr_scale"] for g in optimizer.param_groups] == [1.0, 10.0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 5e-4
    trainable = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(bn.weight) not in trainable
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(bn.running_mean, before)


def test_init_loads_fitting_tensors_and_maps_bare_backbone_keys(tiny_checkpoint, tmp_path):
    state, info = load_init(str(tiny_checkpoint))
    assert info is not None and info.classes == ["water", "land", "road"]
    from deeplab_geo import models

    other = models.build("deeplabv3_lite_mobilenet_v3_small", num_classes=5)
    loaded, fresh = apply_init(other, state)
    assert fresh == ["classifier.4.weight", "classifier.4.bias"]  # 3 classes -> 5: re-initialised
    assert loaded == len(state) - 2
    bare = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    torch.save(bare, tmp_path / "backbone.pth")
    bare_state, bare_info = load_init(str(tmp_path / "backbone.pth"))
    assert bare_info is None
    loaded, _ = apply_init(other, bare_state)
    assert loaded == len(bare)
    torch.save({"weights": object()}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_init(str(tmp_path / "pickle.pth"))


def _voc_config(tmp_path, steps, **train):
    voc = make_voc(tmp_path / "data")
    return TrainConfig.model_validate({
        "data": {"kind": "voc", "root": str(voc), "train_split": "train"},
        "train": {"steps": steps, "batch_size": 2, "crop_size": 32, "lr": 0.01,
                  "workers": 0, "checkpoint_every": 2, "log_every": 1, "threads": 1,
                  **train},
        "output": str(tmp_path / "out" / "model.safetensors"),
    })


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_ends_with_the_same_weights(tmp_path, optimizer):
    whole = _voc_config(tmp_path / "a", 4, optimizer=optimizer)
    train(whole, log=lambda _: None)
    interrupted = _voc_config(tmp_path / "b", 4, optimizer=optimizer)
    _train_until(interrupted, 3)  # killed during step 3: the step-2 checkpoint is the newest
    folder = tmp_path / "b" / "out" / "model.checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000002"]
    resumed = updated(interrupted, {"train.resume": True})
    logs: list[str] = []
    result = train(resumed, log=logs.append)
    assert result.resumed_from == 2 and any("resumed from" in line for line in logs)
    a, b = load_file(str(whole.output)), load_file(str(resumed.output))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000002", "step_00000004"]
    _, info = load_checkpoint(folder / "step_00000002" / "model.safetensors")
    assert info.training == {"step": 2} and info.num_classes == 21


def test_a_different_seed_gives_different_weights(tmp_path):
    a = train(_voc_config(tmp_path / "a", 1, checkpoint_every=None), log=lambda _: None)
    b = train(_voc_config(tmp_path / "b", 1, checkpoint_every=None, seed=1), log=lambda _: None)
    wa, wb = load_file(str(a.checkpoint)), load_file(str(b.checkpoint))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def _train_until(config: TrainConfig, stop: int) -> None:
    """Run ``config`` and interrupt it when it logs step ``stop``."""

    class Interrupt(Exception):
        pass

    def log(line: str) -> None:
        if line.startswith(f"step {stop}/"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, log=log)


def test_resume_refuses_changed_settings_and_missing_checkpoints(tmp_path):
    config = _voc_config(tmp_path, 2)
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(updated(config, {"train.resume": True}), log=lambda _: None)
    train(config, log=lambda _: None)
    with pytest.raises(ConfigError, match="different train.lr"):
        train(updated(config, {"train.resume": True, "train.lr": 0.5}), log=lambda _: None)


def test_fine_tune_chips_from_a_checkpoint_via_the_cli(tmp_path, tiny_checkpoint):
    make_chips_scene(tmp_path / "scene")
    yaml_path = tmp_path / "chips.yaml"
    yaml_path.write_text(
        "data: {kind: chips, raster: scene/image.tif, labels: scene/labels.gpkg,\n"
        "       chip_size: 32, block_size: 32, val_fraction: 0.25}\n"
        f"model: {{init: {tiny_checkpoint}}}\n"
        "train: {steps: 2, batch_size: 2, crop_size: 32, optimizer: adamw, lr: 0.001,\n"
        "        freeze_bn: true, workers: 1, threads: 1}\n"
        "output: out/m.safetensors\n")
    result = invoke("train", yaml_path, "--progress", "none")
    assert result.exit_code == 0, result.output
    assert "initialised" in result.output and "validation mIoU" in result.output
    model, info = load_checkpoint(tmp_path / "out" / "m.safetensors")
    _, base = load_checkpoint(tiny_checkpoint)
    assert info.classes == base.classes and info.normalization == base.normalization
    assert info.training["config"]["model"]["init"] == str(tiny_checkpoint)
    assert 0 <= info.training["val_miou"] <= 1
    assert not (tmp_path / "out" / "m.checkpoints").exists()  # checkpoint_every unset


def test_unnamed_classes_need_data_classes(tmp_path):
    scene = make_chips_scene(tmp_path / "scene")
    config = TrainConfig.model_validate({
        "data": {"kind": "chips", "raster": str(scene["raster"]),
                 "labels": str(scene["vector"]), "chip_size": 32, "block_size": 32},
        "train": {"steps": 1, "batch_size": 1, "crop_size": 16},
        "output": str(tmp_path / "m.safetensors")})
    with pytest.raises(ConfigError, match="data.classes"):
        train(config, log=lambda _: None)


def test_progress_bar_gets_loss_and_lr(tmp_path):
    config = _voc_config(tmp_path, 2, checkpoint_every=None)
    seen: dict = {"updates": 0}

    class Bar:
        def update(self, n):
            seen["updates"] += n

        def set_postfix(self, **values):
            seen.update(values)

        def close(self):
            seen["closed"] = True

    train(config, log=lambda _: None, progress=lambda total: Bar())
    assert seen["updates"] == 2 and seen["closed"] and {"loss", "lr"} <= seen.keys()


def test_train_cli_resume_flag(tmp_path):
    config = tmp_path / "t.yaml"
    voc = make_voc(tmp_path / "data")
    config.write_text(json.dumps({
        "data": {"kind": "voc", "root": str(voc), "train_split": "train"},
        "model": {"architecture": "deeplabv3_lite_mobilenet_v3_small"},
        "train": {"steps": 2, "batch_size": 2, "crop_size": 32, "checkpoint_every": 1,
                  "threads": 1},
        "output": "m.safetensors"}))
    assert invoke("train", config, "--quiet").exit_code == 0
    config_data = load_train_config(config)
    assert config_data.train.resume is False
    result = invoke("train", config, "--resume", "--set", "train.steps=3", "--quiet")
    assert result.exit_code == 2 and "different train.steps" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixed_precision_on_cuda(tmp_path):
    config = _voc_config(tmp_path, 2, device="cuda", amp=True)
    result = train(config, log=lambda _: None)
    _, info = load_checkpoint(result.checkpoint)
    assert info.training["amp"] in ("bfloat16", "float16")


def test_trim_taps_zeroes_far_taps_after_training_and_records_them(tmp_path):
    result = train(_voc_config(tmp_path, 1, checkpoint_every=None, trim_taps=True),
                   log=lambda _: None)
    model, info = load_checkpoint(result.checkpoint)
    trimmed = info.training["trimmed_taps"]
    # 32 px crops: every ASPP rate (96, 192, 288 px at stride 8) lies beyond 16 px
    assert {"classifier.0.convs.1.0", "classifier.0.convs.2.0", "classifier.0.convs.3.0"} \
        <= set(trimmed)
    w = dict(model.named_modules())["classifier.0.convs.3.0"].weight
    ring = torch.ones(3, 3, dtype=torch.bool)
    ring[1, 1] = False
    assert (w[:, :, ring] == 0).all() and (w[:, :, 1, 1] != 0).any()


def test_training_records_the_models_reach_where_it_is_finite(tmp_path):
    config = _voc_config(tmp_path, 1, checkpoint_every=None)
    windowed = TrainConfig.model_validate({**config.model_dump(), "model": {
        **config.model.model_dump(), "options": {"pooling_window": 64}}})
    logs: list[str] = []
    _, info = load_checkpoint(train(windowed, log=logs.append).checkpoint)
    assert info.reach is not None and info.reach % 32 == 0 and f"reach {info.reach} px" in logs
    _, pooled = load_checkpoint(train(config, log=lambda _: None).checkpoint)
    assert pooled.reach is None  # global pooling looks at the whole input


def test_an_ensemble_trains_each_member_on_its_own_loss_and_runs_as_one_model(tmp_path):
    config = _voc_config(tmp_path, 2, checkpoint_every=None)
    ensemble = updated(config, {"model.options": {"members": 2}})
    result = train(ensemble, log=lambda _: None)
    model, info = load_checkpoint(result.checkpoint)
    assert info.options == {"members": 2} and len(model.members) == 2
    first, second = (dict(m.named_parameters()) for m in model.members)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # their own starts
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x)["out"], 1) for m in model.members]).mean(0)
        assert torch.allclose(torch.softmax(model(x)["out"], 1), mean, atol=1e-6)
    # the loss is the sum of the members' own losses, each on its own half of the batch
    from deeplab_geo.tools.train import _loss
    model.train()
    x, labels = torch.rand(4, 3, 48, 48), torch.randint(0, 21, (4, 48, 48))
    torch.manual_seed(0)  # the same dropout masks
    total = _loss(model, x, labels, None, 0.0)
    torch.manual_seed(0)
    own = sum(_loss(m, x[2 * i:2 * i + 2], labels[2 * i:2 * i + 2], None, 0.0)
              for i, m in enumerate(model.members))
    assert torch.allclose(total, own)
    assert not torch.allclose(total, sum(_loss(m, x, labels, None, 0.0) for m in model.members))


def test_an_ensemble_refuses_init_weights(tmp_path, tiny_checkpoint):
    config = _voc_config(tmp_path, 1, checkpoint_every=None)
    config = updated(config, {"model.options": {"members": 2},
                              "model.init": str(tiny_checkpoint)})
    with pytest.raises(ConfigError, match="an ensemble .* trains its members from scratch"):
        train(config, log=lambda _: None)
