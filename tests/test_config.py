from pathlib import Path

import pytest

from deeplab_geo.config import (
    is_training_config,
    load_pipeline,
    load_train_config,
    validate_pipeline,
)
from deeplab_geo.errors import ConfigError

PIPELINES = sorted((Path(__file__).parent.parent / "pipelines").glob("*.yaml"))
BASE = {"input": "in.tif", "output_dir": "out"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_shipped_yaml_validates(path):
    if is_training_config(path):
        config = load_train_config(path)
        assert config.output.is_absolute()
    else:
        config = load_pipeline(path)
        assert config.input.is_absolute() and config.output_dir.is_absolute()


def test_shipped_pipelines_exist():
    assert {p.name for p in PIPELINES} >= {"landcover.yaml", "train_landcover_demo.yaml"}


@pytest.mark.parametrize("data,message", [
    ({**BASE, "tiling": {"tile": 3}}, "unknown key 'tiling.tile'; allowed keys here: tile_size"),
    ({**BASE, "bogus": 1}, "unknown key 'bogus'"),
    ({"input": "a.tif"}, "missing required key 'output_dir'"),
    ({**BASE, "tiling": {"tile_size": 64, "overlap": 64}}, "overlap (64) must be smaller"),
    ({**BASE, "tiling": {"tile_size": 8}}, "tiling.tile_size"),
    ({**BASE, "crf": {"w1": -1}}, "crf.w1"),
    ({**BASE, "crf": {"theta_alpha": 0}}, "crf.theta_alpha"),
    ({**BASE, "model": {"batch_size": "many"}}, "model.batch_size"),
    ({**BASE, "model": {"device": "tpu"}}, "model.device"),
    ({**BASE, "vectorize": {"connectivity": 6}}, "vectorize.connectivity"),
    ({**BASE, "tta": {"scales": [1.0, 0.05]}}, "tta.scales.1: Input should be greater than"),
])
def test_invalid_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        validate_pipeline(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "p.yaml").write_text("input: ../in.tif\noutput_dir: out\n"
                                "model: {checkpoint: m.safetensors}\n")
    config = load_pipeline(sub / "p.yaml")
    assert config.input == tmp_path / "in.tif"
    assert config.output_dir == sub / "out"
    assert config.model.checkpoint == str(sub / "m.safetensors")


def test_override_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    sub = tmp_path / "cfg"
    sub.mkdir()
    (sub / "p.yaml").write_text("input: in.tif\noutput_dir: out\n")
    monkeypatch.chdir(tmp_path)
    config = load_pipeline(sub / "p.yaml", {"model.checkpoint": "w/m.safetensors",
                                            "output_dir": "elsewhere",
                                            "input": "https://example.com/a.tif"})
    assert config.model.checkpoint == str(tmp_path / "w" / "m.safetensors")
    assert config.output_dir == tmp_path / "elsewhere"
    assert config.input == "https://example.com/a.tif"  # URLs stay as they are


def test_a_changed_config_is_validated_again(tmp_path):
    from deeplab_geo.config import updated

    (tmp_path / "p.yaml").write_text("input: a.tif\noutput_dir: o\n")
    config = load_pipeline(tmp_path / "p.yaml")
    changed = updated(config, {"crf.enabled": False, "model.backend": "torch"})
    assert (changed.crf.enabled, changed.model.backend) == (False, "torch")
    assert changed.input == config.input and changed.tiling == config.tiling
    assert changed.tiling.model_fields_set == set()  # defaults stay defaults, not given keys
    with pytest.raises(ConfigError, match="tiling.tile_size"):
        updated(config, {"tiling.tile_size": 4})


def test_builtin_checkpoint_is_left_alone(tmp_path):
    (tmp_path / "p.yaml").write_text("input: a.tif\noutput_dir: o\n"
                                     "model: {checkpoint: 'builtin:landcover-demo'}\n")
    assert load_pipeline(tmp_path / "p.yaml").model.checkpoint == "builtin:landcover-demo"


def test_overrides_apply_before_validation(tmp_path):
    (tmp_path / "p.yaml").write_text("input: a.tif\noutput_dir: o\n")
    config = load_pipeline(tmp_path / "p.yaml", {"crf.enabled": False, "tiling.overlap": 0})
    assert config.crf.enabled is False and config.tiling.overlap == 0
    with pytest.raises(ConfigError, match="tiling.overlap"):
        load_pipeline(tmp_path / "p.yaml", {"tiling.overlap": -5})


@pytest.mark.parametrize("text,message", [
    ("input: [unclosed\n", "invalid YAML at line"),
    ("- just\n- a list\n", "must be a YAML mapping"),
    ("!!python/object/apply:os.system ['echo hi']\n", "invalid YAML"),
])
def test_bad_yaml_files(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path)


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline(tmp_path / "nope.yaml")


def test_train_config_rejects_overlapping_seeds(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("data: {train_seeds: [1, 2], val_seeds: [2]}\noutput: m.safetensors\n")
    with pytest.raises(ConfigError, match="overlap"):
        load_train_config(path)
