"""``deeplab-geo import-model``: checkpoints from weights trained elsewhere."""

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deeplab_geo.cli import main
from deeplab_geo.errors import CheckpointError
from deeplab_geo.models.importing import import_model
from deeplab_geo.plugins import get_backend


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def torchvision_model(**kwargs):
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    torch.manual_seed(0)
    return deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4,
                                        **kwargs).eval()


@pytest.mark.parametrize("aux", [False, True])
def test_a_torchvision_state_dict_runs_as_it_ran_in_torchvision(tmp_path, aux):
    source = torchvision_model(aux_loss=aux)
    weights = tmp_path / "tv.pth"
    torch.save(source.state_dict(), weights)
    out = tmp_path / "imported.safetensors"
    result = invoke("import-model", weights, "--architecture", "deeplabv3_mobilenet_v3_large",
                    "--classes", "water,forest,field,road", "--resolution", "0.3",
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert "torchvision layout" in result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classes"] == ["water", "forest", "field", "road"]
    assert meta["resolution"] == 0.3 and meta["output_stride"] == 16
    assert meta["reach"] is None  # torchvision's models pool globally: no finite reach
    x = np.random.default_rng(0).integers(0, 255, (1, 3, 96, 96)).astype(np.float32)
    ours = get_backend("torch").load(str(out), device="cpu").predict(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = torch.softmax(source((torch.from_numpy(x) / 255 - mean) / std)["out"], 1)
    assert np.abs(ours - expected.numpy()).max() < 1e-4


def test_a_state_dict_of_our_own_architecture_is_taken_as_it_is(tmp_path, tiny_checkpoint):
    from deeplab_geo.models.checkpoint import load_checkpoint

    model, info = load_checkpoint(tiny_checkpoint)
    weights = tmp_path / "bare.pth"
    torch.save(model.state_dict(), weights)
    out, layout = import_model(weights, tmp_path / "again.safetensors",
                               architecture=info.architecture, classes=info.classes,
                               normalization=info.normalization)
    again, _ = load_checkpoint(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))


def test_segmentation_models_pytorch_checkpoints_are_refused_with_the_reason(tmp_path):
    weights = tmp_path / "smp.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(64, 3, 7, 7),
                "decoder.aspp.convs.0.0.weight": torch.zeros(256, 2048, 1, 1),
                "segmentation_head.0.weight": torch.zeros(3, 256, 1, 1)}, weights)
    with pytest.raises(CheckpointError, match="segmentation_models_pytorch .* export it to "
                                              "ONNX"):
        import_model(weights, tmp_path / "smp.safetensors", architecture="deeplabv3_resnet50",
                     classes=["a", "b", "c"])


def test_a_kazuto1011_deeplab_v2_checkpoint_imports_into_the_caffe_variant(tmp_path):
    from deeplab_geo.models import build
    from tests.test_model_zoo import _kazuto_key

    torch.manual_seed(0)
    source = build("deeplabv2_resnet101", num_classes=21, caffe=True)
    kazuto = {_kazuto_key(k): v for k, v in source.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    weights = tmp_path / "v2.pth"
    torch.save(kazuto, weights)
    out, layout = import_model(weights, tmp_path / "v2.safetensors",
                               architecture="deeplabv2_resnet101",
                               classes=[f"c{i}" for i in range(21)], reach=160)
    assert layout == "kazuto1011"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["options"], meta["reach"]) == ({"caffe": True}, 160)


def test_weights_that_do_not_fit_and_pickles_with_code_are_refused(tmp_path):
    weights = tmp_path / "tv.pth"
    torch.save(torchvision_model().state_dict(), weights)
    result = invoke("import-model", weights, "--architecture", "deeplabv3_mobilenet_v3_large",
                    "--classes", "a,b", "--out", tmp_path / "x.safetensors")
    assert result.exit_code == 2
    assert "do not fit deeplabv3_mobilenet_v3_large with 2 classes" in result.output
    assert len(result.output.strip().splitlines()) == 1

    # another architecture altogether: counts and the first keys, not every key (was 20 KB)
    wrong = invoke("import-model", weights, "--architecture", "deeplabv3_resnet50",
                   "--classes", ",".join("abcdefghijklmnopqrstu"), "--out",
                   tmp_path / "y.safetensors")
    assert wrong.exit_code == 2
    line = wrong.output.strip()
    assert "\n" not in line and len(line) < 500, line
    assert re.search(r"\(\d+ keys missing: backbone\.\S+, backbone\.\S+, \+\d+ more; \d+ keys "
                     r"unexpected: \S+, \S+, \+\d+ more", line), line

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused to unpickle code"):
        import_model(evil, tmp_path / "e.safetensors", architecture="deeplabv3_resnet50",
                     classes=["a"])
    result = invoke("import-model", weights, "--architecture", "nope", "--classes", "a",
                    "--out", tmp_path / "y.safetensors")
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output
    assert not list(tmp_path.glob("*.safetensors"))
