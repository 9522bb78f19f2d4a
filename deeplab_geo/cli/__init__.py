"""The ``deeplab-geo`` command line. One module per subcommand; the library never imports this."""

from __future__ import annotations

import os

import click

import deeplab_geo
from deeplab_geo.cli import (
    backends,
    evaluate,
    export_onnx,
    import_model,
    plan,
    quantize,
    run,
    sample,
    schema,
    segment,
    stack,
    train,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(deeplab_geo.__version__, prog_name="deeplab-geo")
def main() -> None:
    """DeepLab land-cover segmentation of large aerial and satellite rasters."""
    # Set by programs that start this one (the QGIS plugin): end with that program.
    parent = os.environ.get("DEEPLAB_GEO_PARENT_PID", "").strip()
    if not parent:
        return
    if not parent.isdecimal() or int(parent) <= 0:
        click.echo(f"Warning: DEEPLAB_GEO_PARENT_PID={parent!r} is not a process id; "
                   "ignored", err=True)
        return
    from deeplab_geo.processes import follow_parent

    if not follow_parent(int(parent)):
        raise click.ClickException(f"process {parent} (DEEPLAB_GEO_PARENT_PID), which "
                                   "started deeplab-geo, has ended; nothing was done")


for module in (run, segment, plan, sample, stack, schema, train, evaluate, export_onnx,
               import_model, quantize, backends):
    main.add_command(module.command)
