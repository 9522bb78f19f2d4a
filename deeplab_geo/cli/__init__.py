"""The ``deeplab-geo`` command line. One module per subcommand; the library never imports this."""

from __future__ import annotations

import click

import deeplab_geo
from deeplab_geo.cli import (
    backends,
    evaluate,
    export_onnx,
    import_model,
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


for module in (run, segment, sample, stack, schema, train, evaluate, export_onnx, import_model,
               backends):
    main.add_command(module.command)
