"""Backends: the example plugin, the ONNX Runtime plugin, test-time augmentation."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deeplab_geo.cli import main
from deeplab_geo.errors import BackendError
from deeplab_geo.hookspecs import hookimpl
from deeplab_geo.pipeline import tta
from deeplab_geo.plugins import (
    choose_backend,
    get_backend,
    get_plugin_manager,
    registered_backends,
)

EXAMPLE = Path(__file__).parent.parent / "plugins" / "example_eager"


@pytest.fixture
def eager_plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    module = importlib.import_module("deeplab_geo_eager")
    pm = get_plugin_manager()
    pm.register(module, name="eager-example")
    yield module
    pm.unregister(module)
    sys.modules.pop("deeplab_geo_eager", None)


def tiles(seed=0, shape=(2, 3, 40, 56)):
    return np.random.default_rng(seed).integers(0, 255, shape).astype(np.float32)


def test_documented_example_plugin_matches_the_torch_backend(eager_plugin, tiny_checkpoint):
    assert registered_backends()["eager"].plugin == "eager-example"
    eager = get_backend("eager").load(str(tiny_checkpoint))
    torch_backend = get_backend("torch").load(str(tiny_checkpoint), device="cpu")
    a, b = eager.predict(tiles()), torch_backend.predict(tiles())
    assert a.shape == (2, 3, 40, 56)
    assert np.allclose(a.sum(1), 1, atol=1e-5)
    assert np.abs(a - b).max() < 1e-4


def test_built_in_and_example_backends_meet_the_typed_contract(eager_plugin, tiny_checkpoint):
    from deeplab_geo.hookspecs import Backend, Predictor

    for name in ("torch", "onnx", "eager"):
        backend = get_backend(name)
        assert isinstance(backend, Backend), name
        assert isinstance(backend.load(str(tiny_checkpoint), device="cpu"), Predictor), name


def test_example_plugin_is_gone_after_the_fixture():
    assert "eager" not in registered_backends()


class _Fake:
    def __init__(self, name, auto_priority=None):
        self.name, self.description = name, "fake"
        if auto_priority is not None:
            self.auto_priority = auto_priority

    def load(self, checkpoint, *, device="auto"):
        raise AssertionError("these tests only choose backends")


def _plugin(*backends):
    class Plugin:
        @hookimpl
        def register_backends(self):
            return list(backends)

    return Plugin()


@pytest.fixture
def fake_plugins():
    pm = get_plugin_manager()
    added = []

    def add(*backends):
        plugin = _plugin(*backends)
        pm.register(plugin, name=f"fake-{len(added)}")
        added.append(plugin)

    yield add
    for plugin in added:
        pm.unregister(plugin)


def test_auto_picks_the_highest_priority_for_the_device(fake_plugins):
    fake_plugins(_Fake("fast-cpu", {"cpu": 99}), _Fake("gpu-only", {"cuda": 99}),
                 _Fake("never-auto"))
    assert choose_backend("auto", "cpu") == "fast-cpu"
    assert choose_backend("auto", "cuda:0") == "gpu-only"
    assert choose_backend("never-auto", "cpu") == "never-auto"


def test_auto_default_on_cpu_is_an_installed_backend_and_named_backends_are_checked():
    chosen = choose_backend("auto", "cpu")
    assert chosen == ("onnx" if "onnx" in registered_backends() else "torch")
    with pytest.raises(BackendError, match="no backend named 'nope'"):
        choose_backend("nope", "cpu")


onnx = pytest.importorskip("deeplab_geo_onnx")


def test_onnx_plugin_is_registered_through_its_entry_point():
    entry = registered_backends()["onnx"]
    assert entry.source.startswith("deeplab-geo-onnx")
    result = CliRunner().invoke(main, ["backends"])
    assert "onnx" in result.output and "deeplab-geo-onnx" in result.output


def test_export_onnx_and_onnx_backend_agree_with_torch(tiny_checkpoint, tmp_path):
    out = tmp_path / "tiny.onnx"
    result = CliRunner().invoke(main, ["export-onnx", str(tiny_checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".json").is_file()
    x = tiles(1, (3, 3, 48, 40))
    from_file = get_backend("onnx").load(str(out), device="cpu").predict(x)
    in_memory = get_backend("onnx").load(str(tiny_checkpoint), device="cpu").predict(x)
    reference = get_backend("torch").load(str(tiny_checkpoint), device="cpu").predict(x)
    assert from_file.shape == reference.shape == (3, 3, 48, 40)
    assert np.abs(from_file - reference).max() < 1e-4
    assert np.abs(in_memory - reference).max() < 1e-4
    assert (from_file.argmax(1) == reference.argmax(1)).mean() >= 0.999


def test_a_batch_split_across_sessions_equals_one_session(tiny_checkpoint):
    predictor = get_backend("onnx").load(str(tiny_checkpoint), device="cpu")
    x = tiles(2, (5, 3, 40, 48))
    whole = onnx._run(predictor._whole, x)
    assert predictor.streams == min(onnx.MAX_STREAMS, onnx.cpu_cores())
    assert np.abs(predictor.predict(x) - whole).max() < 1e-5
    assert np.abs(predictor.predict(x[:1]) - whole[:1]).max() < 1e-5


def test_every_session_allocates_from_the_one_shared_cpu_arena(tiny_checkpoint):
    """The whole and split sessions share one arena and plan no per-shape buffers, so mixed
    batch sizes reuse the same memory (about 620 MB instead of 1,110 MB on 768 px tiles)."""
    predictor = get_backend("onnx").load(str(tiny_checkpoint), device="cpu")
    predictor.predict(tiles(3, (3, 3, 40, 48)))  # builds the split sessions too
    assert onnx.shared_cpu_arena()
    sessions = [predictor._whole, *predictor._parts]
    assert len(sessions) == 1 + predictor.streams
    for session in sessions:
        options = session.get_session_options()
        assert options.get_session_config_entry("session.use_env_allocators") == "1"
        assert not options.enable_mem_pattern


def test_exports_are_cached_so_later_runs_never_import_torch(tiny_checkpoint, tmp_path):
    """The first load exports the checkpoint (torch); a later process loads the cached export
    without torch, and a changed checkpoint is exported again."""
    import json
    import subprocess
    import sys

    code = ("import sys, json; from deeplab_geo.plugins import get_backend; "
            f"get_backend('onnx').load({str(tiny_checkpoint)!r}, device='cpu'); "
            "print(json.dumps('torch' in sys.modules))")
    env = {**__import__("os").environ, "DEEPLAB_GEO_CACHE": str(tmp_path / "cache")}

    def torch_imported():
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert torch_imported()  # exported
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    assert not torch_imported()  # loaded from the cache
    meta = tiny_checkpoint.with_suffix(".json")
    original = meta.read_text()
    try:
        meta.write_text(original.replace('"land"', '"ground"'))
        assert torch_imported()  # another checkpoint content: exported again
    finally:
        meta.write_text(original)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2


def test_export_onnx_refuses_other_suffixes(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["export-onnx", str(tiny_checkpoint),
                                       "--out", str(tmp_path / "m.bin")])
    assert result.exit_code == 3 and "must end in .onnx" in result.stderr


def test_onnx_cuda_request_without_provider_is_a_clear_error():
    from deeplab_geo.errors import BackendError

    if "CUDAExecutionProvider" in onnx.ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(BackendError, match="no CUDA provider"):
        onnx.providers_for("cuda")


class SizeAware:
    """Probabilities that depend on the input scale: class 1 wins only at full size."""

    def __init__(self, full):
        self.full, self.calls = full, []

    def predict(self, x):
        self.calls.append(x.shape)
        p = np.zeros((x.shape[0], 2, *x.shape[2:]), np.float32)
        winner = 1 if x.shape[-1] == self.full else 0
        p[:, winner], p[:, 1 - winner] = 0.9, 0.1
        return p


def test_tta_max_fusion_over_scales_and_flip():
    predictor = SizeAware(full=40)
    x = tiles(2, (1, 3, 40, 40))
    fused = tta.predict(predictor, x, scales=[0.5, 0.75, 1.0], flip=True)
    assert [c[-1] for c in predictor.calls] == [20, 20, 30, 30, 40, 40]
    assert fused.shape == (1, 2, 40, 40)
    assert np.allclose(fused, 0.5)  # max(0.9, 0.9) for both classes, renormalised
    mean = tta.predict(SizeAware(40), x, scales=[0.5, 1.0], fusion="mean")
    assert np.allclose(mean, 0.5)


def test_tta_default_is_a_plain_prediction():
    predictor = SizeAware(full=40)
    out = tta.predict(predictor, tiles(3, (1, 3, 40, 40)))
    assert len(predictor.calls) == 1 and np.allclose(out[:, 1], 0.9)


def test_an_object_that_is_not_a_backend_is_refused_with_the_contract():
    from deeplab_geo.errors import BackendError
    from deeplab_geo.plugins import get_plugin_manager, registered_backends

    class NotABackend:
        name = "broken"

    pm = get_plugin_manager()
    plugin = _plugin(NotABackend())
    pm.register(plugin, name="broken-plugin")
    try:
        with pytest.raises(BackendError, match="broken-plugin.*needs name, description and load"):
            registered_backends(pm)
    finally:
        pm.unregister(plugin)


def test_an_ensemble_checkpoint_runs_on_onnx_as_on_torch_with_the_mean_probabilities(tmp_path):
    import torch

    from deeplab_geo.checkpoints import ModelInfo
    from deeplab_geo.models.checkpoint import build_model, save_checkpoint
    from tests.conftest import TINY_CLASSES, TINY_COLOURS

    torch.manual_seed(0)
    info = ModelInfo(architecture="deeplabv3_lite_mobilenet_v3_small", num_classes=3,
                     classes=TINY_CLASSES, colours=TINY_COLOURS, options={"members": 2})
    model = build_model(info).eval()
    path = save_checkpoint(model, info, tmp_path / "ensemble.safetensors")
    x = tiles(2, (2, 3, 48, 40))
    reference = get_backend("torch").load(str(path), device="cpu").predict(x)
    exported = get_backend("onnx").load(str(path), device="cpu").predict(x)
    with torch.no_grad():
        mean_px, std_px = (torch.from_numpy(a) for a in info.input_statistics())
        pixels = (torch.from_numpy(x) - mean_px) / std_px
        mean = torch.stack([torch.softmax(m(pixels)["out"], 1) for m in model.members]).mean(0)
    assert np.abs(reference - mean.numpy()).max() < 1e-5
    assert np.abs(exported - reference).max() < 1e-4
