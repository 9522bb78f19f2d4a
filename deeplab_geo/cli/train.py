"""``deeplab-geo train``: train a model from a training YAML.

Example::

    deeplab-geo train pipelines/train_landcover_demo.yaml
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplab_geo.cli._common import parse_overrides, reports_errors


@click.command("train")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any key, e.g. --set train.steps=100 (repeatable).")
@reports_errors
def command(config_path: Path, overrides: tuple[str, ...]) -> None:
    """Train the model CONFIG describes and write its checkpoint (safetensors + JSON)."""
    from deeplab_geo.config import load_train_config
    from deeplab_geo.train import train

    config = load_train_config(config_path, parse_overrides(overrides))
    result = train(config, log=lambda line: click.echo(line, err=True))
    miou = "n/a" if result.val_miou is None else f"{result.val_miou:.4f}"
    click.echo(f"Trained in {result.seconds:.0f} s; validation mIoU {miou}; "
               f"checkpoint {result.checkpoint}")
