"""The DeepLab model zoo: paper-exact sizes, torchvision compatibility, weight import."""

import pytest
import torch
import torchvision.models.segmentation as tv_seg

from deeplab_geo import models
from deeplab_geo.models.convert import adapt_input_channels, from_kazuto1011


def test_available_names():
    assert set(models.available()) == {
        "deeplabv2_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
        "deeplabv3_mobilenet_v3_large", "deeplabv3plus_resnet50", "deeplabv3plus_resnet101",
        "deeplabv3_lite_mobilenet_v3_small", "deeplabv3plus_lite_mobilenet_v3_small"}


def test_deeplabv2_resnet101_aspp_l_has_the_papers_parameter_count():
    net = models.build("deeplabv2_resnet101", num_classes=21)
    assert sum(p.numel() for p in net.parameters()) == 44_048_532
    assert [b.dilation for b in net.classifier.branches] == [(6, 6), (12, 12), (18, 18),
                                                             (24, 24)]


@pytest.mark.parametrize("aspp,rates", [("S", [2, 4, 8, 12]), ("LargeFOV", [12])])
def test_deeplabv2_head_variants(aspp, rates):
    net = models.build("deeplabv2_resnet101", num_classes=3, aspp=aspp)
    assert [b.dilation[0] for b in net.classifier.branches] == rates


@pytest.mark.parametrize("name,reference", [
    ("deeplabv3_resnet50", tv_seg.deeplabv3_resnet50),
    ("deeplabv3_resnet101", tv_seg.deeplabv3_resnet101),
    ("deeplabv3_mobilenet_v3_large", tv_seg.deeplabv3_mobilenet_v3_large),
])
def test_torchvision_state_dicts_load_strictly_and_give_the_same_logits(name, reference):
    torch.manual_seed(0)
    theirs = reference(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).eval()
    ours = models.build(name, num_classes=21, aux_loss=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.rand(1, 3, 57, 71)
    with torch.inference_mode():
        a, b = theirs(x), ours(x)
    assert (a["out"] - b["out"]).abs().max() <= 1e-4
    assert (a["aux"] - b["aux"]).abs().max() <= 1e-4


@pytest.mark.parametrize("name,stride", [("deeplabv3_resnet50", 8), ("deeplabv3_resnet50", 16),
                                         ("deeplabv3plus_resnet50", 16),
                                         ("deeplabv3plus_resnet50", 8)])
def test_output_stride_sets_dilation_and_rates(name, stride):
    net = models.build(name, num_classes=4, output_stride=stride).eval()
    features = net.backbone(torch.zeros(1, 3, 64, 64))
    assert features["out"].shape[-1] == 64 // stride
    aspp = net.classifier.aspp if hasattr(net.classifier, "aspp") else net.classifier[0]
    rates = [branch[0].dilation[0] for branch in list(aspp.convs)[1:4]]
    assert rates == ([6, 12, 18] if stride == 16 else [12, 24, 36])
    with torch.inference_mode():
        assert net(torch.zeros(1, 3, 33, 47))["out"].shape == (1, 4, 33, 47)


def test_v3plus_uses_stride_4_features():
    net = models.build("deeplabv3plus_resnet50", num_classes=2).eval()
    assert net.backbone(torch.zeros(1, 3, 64, 64))["low"].shape == (1, 256, 16, 16)


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="unexpected keyword argument 'bogus'"):
        models.build("deeplabv3_resnet50", num_classes=2, bogus=1)


def _kazuto_key(ours: str) -> str:
    """Our key -> the kazuto1011 (MSC-wrapped) key, written from that project's layout."""
    parts = ours.split(".")
    if parts[1] in ("conv1", "bn1"):
        return f"base.layer1.conv1.{'conv' if parts[1] == 'conv1' else 'bn'}.{parts[2]}"
    if parts[0] == "classifier":
        return f"base.aspp.c{parts[2]}.{parts[3]}"
    layer, block, module, rest = int(parts[1][-1]), int(parts[2]), parts[3], parts[4:]
    if module == "downsample":
        part, kind = "shortcut", ("conv" if rest[0] == "0" else "bn")
        rest = rest[1:]
    else:
        part = {"1": "reduce", "2": "conv3x3", "3": "increase"}[module[-1]]
        kind = "conv" if module.startswith("conv") else "bn"
    return f"base.layer{layer + 1}.block{block + 1}.{part}.{kind}.{'.'.join(rest)}"


def test_kazuto1011_caffe_layout_imports_into_the_caffe_variant():
    torch.manual_seed(0)
    source = models.build("deeplabv2_resnet101", num_classes=21, caffe=True).eval()
    assert source.backbone.layer2[0].conv1.stride == (2, 2)
    assert source.backbone.layer2[0].conv2.stride == (1, 1)
    assert source.backbone.maxpool.ceil_mode
    kazuto = {_kazuto_key(k): v for k, v in source.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert "base.layer5.block3.increase.bn.running_var" in kazuto
    assert "base.aspp.c3.bias" in kazuto
    target = models.build("deeplabv2_resnet101", num_classes=21, caffe=True).eval()
    target.load_state_dict(from_kazuto1011(kazuto), strict=True)
    x = torch.rand(1, 3, 41, 41)
    with torch.inference_mode():
        assert torch.equal(source(x)["out"], target(x)["out"])


def test_kazuto1011_rejects_foreign_keys():
    with pytest.raises(ValueError, match="unexpected key 'fc.weight'"):
        from_kazuto1011({"fc.weight": torch.zeros(1)})


@pytest.mark.parametrize("bands", [1, 6])
def test_first_conv_adaptation_preserves_grey_response(bands):
    rgb = torch.randn(8, 3, 3, 3)
    adapted = adapt_input_channels(rgb, bands)
    assert adapted.shape == (8, bands, 3, 3)
    grey = torch.rand(1, 1, 9, 9)
    conv = torch.nn.functional.conv2d
    assert torch.allclose(conv(grey.expand(1, bands, 9, 9), adapted),
                          conv(grey.expand(1, 3, 9, 9), rgb), atol=1e-5)


def test_first_conv_adaptation_keeps_colour_filters_for_extra_bands():
    rgb = torch.randn(4, 3, 3, 3)
    four = adapt_input_channels(rgb, 4)
    assert torch.allclose(four[:, :3], rgb * 0.75) and torch.allclose(four[:, 3], rgb[:, 0] * 0.75)
