import json

import pytest
import torch

from deeplab_geo import models
from deeplab_geo.errors import CheckpointError
from deeplab_geo.models.backbones import mobilenet_v3_atrous
from deeplab_geo.models.checkpoint import (
    ModelInfo,
    build_model,
    load_checkpoint,
    resolve,
    save_checkpoint,
)

DEMO = "deeplabv3_lite_mobilenet_v3_small"


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_drives_dilation(output_stride):
    backbone, channels = mobilenet_v3_atrous("mobilenet_v3_small", output_stride=output_stride,
                                             low_level=True)
    features = backbone(torch.zeros(1, 3, 64, 64))
    assert features["out"].shape[-1] == 64 // output_stride
    assert features["low"].shape[-1] == 16
    assert features["out"].shape[1] == channels["out"]


@pytest.mark.parametrize("bands", [1, 3, 5])
def test_build_returns_logits_at_input_resolution(bands):
    net = models.build(DEMO, num_classes=6, in_channels=bands).eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, bands, 50, 70))["out"]
    assert out.shape == (1, 6, 50, 70)


def test_build_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'nope'; available: "):
        models.build("nope", num_classes=2)


def info(**kw):
    base = dict(architecture=DEMO, num_classes=2, classes=["a", "b"], colours=[[0, 0, 0]] * 2)
    return ModelInfo(**{**base, **kw})


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_model(info()).eval()
    path = save_checkpoint(net, info(), tmp_path / "m.safetensors")
    loaded, meta = load_checkpoint(path)
    assert meta == info()
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(net(x)["out"], loaded(x)["out"])


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = save_checkpoint(build_model(info()), info(), tmp_path / "m.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["num_classes"], meta["classes"], meta["colours"] = 3, ["a", "b", "c"], [[0, 0, 0]] * 3
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="weights do not fit architecture"):
        load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    path.with_suffix(".json").write_text(json.dumps({"format": "deeplab-geo/1", **info().__dict__}))
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(path)


def test_plain_state_dict_pt_loads(tmp_path):
    net = build_model(info())
    path = tmp_path / "m.pt"
    torch.save(net.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"format": "deeplab-geo/1", **info().__dict__}))
    loaded, loaded_info = load_checkpoint(path)
    assert loaded_info.architecture == info().architecture
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_missing_metadata_and_unknown_builtin(tmp_path):
    path = save_checkpoint(build_model(info()), info(), tmp_path / "m.safetensors")
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="metadata missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no built-in checkpoint 'nope'"):
        resolve("builtin:nope")


def test_metadata_must_agree_with_itself():
    with pytest.raises(CheckpointError, match="classes"):
        info(classes=["only-one"])


def test_members_builds_an_ensemble_of_independent_copies():
    from deeplab_geo.models import Ensemble

    torch.manual_seed(0)
    net = models.build("deeplabv3_lite_mobilenet_v3_small", num_classes=3, members=3,
                       pooling_window=32)
    assert isinstance(net, Ensemble) and len(net.members) == 3
    a, b = (dict(m.named_parameters()) for m in net.members[:2])
    assert any(not torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        probs = torch.softmax(net(x)["out"], 1)
        mean = torch.stack([torch.softmax(m(x)["out"], 1) for m in net.members]).mean(0)
    assert torch.allclose(probs, mean, atol=1e-6)
    for bad in (0, 1.5, "2"):
        with pytest.raises(ValueError, match="members must be a positive integer"):
            models.build("deeplabv3_lite_mobilenet_v3_small", num_classes=3, members=bad)
    assert not isinstance(models.build("deeplabv3_lite_mobilenet_v3_small", num_classes=3,
                                       members=1), Ensemble)
