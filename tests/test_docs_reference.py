"""The generated reference pages (docs/gen_reference.py) cover every pipeline key and command."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import click
from pydantic import BaseModel

from deeplab_geo.cli import main
from deeplab_geo.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    path = ROOT / "docs" / "gen_reference.py"
    spec = importlib.util.spec_from_file_location("gen_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _commands(group: click.Group, prefix: str = "deeplab-geo") -> list[str]:
    names = []
    for name, command in group.commands.items():
        names.append(f"{prefix} {name}")
        if isinstance(command, click.Group):
            names += _commands(command, f"{prefix} {name}")
    return names


def test_reference_pages_cover_every_pipeline_key_and_command(tmp_path):
    written = _generator().generate(tmp_path)
    assert sorted(p.name for p in written) == ["cli.md", "configuration.md"]

    configuration = (tmp_path / "configuration.md").read_text(encoding="utf-8")
    pipeline_part = configuration.split("## Training files")[0]
    keys = _keys(PipelineConfig)
    assert {"input", "model.checkpoint", "crf.theta_alpha", "vectorize.format"} <= set(keys)
    for key in keys:
        rows = [line for line in pipeline_part.splitlines() if line.startswith(f"| `{key}` |")]
        assert len(rows) == 1, f"{key}: {len(rows)} rows in configuration.md"
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", rows[0])[1:-1]]
        assert len(cells) == 5, rows[0]
        assert cells[-1], f"{key} has no description"
    assert "## Training files" in configuration and "`train.lr`" in configuration

    cli = (tmp_path / "cli.md").read_text(encoding="utf-8")
    commands = _commands(main)
    assert {"deeplab-geo run", "deeplab-geo segment", "deeplab-geo evaluate pipeline"} <= set(
        commands)
    for command in commands:
        assert f"# `{command}`" in cli, f"{command} missing from cli.md"
        assert f"Usage: {command} " in cli, f"{command}: no usage line in cli.md"
