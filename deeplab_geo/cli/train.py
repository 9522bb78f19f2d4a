"""``deeplab-geo train``: train a model from a training YAML.

Examples::

    deeplab-geo train pipelines/train_landcover_demo.yaml
    deeplab-geo train pipelines/train_chips_demo.yaml --set train.steps=100
    deeplab-geo train pipelines/voc2012.yaml --set data.root=/data/VOCdevkit/VOC2012 --resume
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplab_geo.cli._common import (
    parse_overrides,
    progress_factory,
    progress_option,
    reports_errors,
)


@click.command("train")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any key, e.g. --set train.steps=100 (repeatable).")
@click.option("--resume", is_flag=True,
              help="Continue from the newest checkpoint in train.checkpoint_dir "
                   "(= --set train.resume=true).")
@progress_option
@reports_errors
def command(config_path: Path, overrides: tuple[str, ...], resume: bool, progress_style: str,
            quiet: bool) -> None:
    """Train the model CONFIG describes and write its checkpoint (safetensors + JSON).

    A progress bar shows the loss and learning rate; with --progress none (or json), a line
    is logged every train.log_every steps instead.
    """
    from deeplab_geo.config import load_train_config
    from deeplab_geo.tools.train import train

    values = parse_overrides(overrides)
    if resume:
        values["train.resume"] = True
    config = load_train_config(config_path, values)
    style = "none" if quiet else progress_style
    result = train(config, log=lambda line: click.echo(line, err=True),
                   progress=progress_factory(style, "step"))
    miou = "n/a" if result.val_miou is None else f"{result.val_miou:.4f}"
    click.echo(f"Trained in {result.seconds:.0f} s; validation mIoU {miou}; "
               f"checkpoint {result.checkpoint}")
