"""``deeplab-geo export-onnx``: export a checkpoint to ONNX for the ``onnx`` backend.

Examples::

    deeplab-geo export-onnx builtin:landcover-demo --out models/landcover-demo.onnx
    deeplab-geo run pipelines/landcover.yaml --set model.backend=onnx \\
        --set model.checkpoint=models/landcover-demo.onnx
"""

from __future__ import annotations

from pathlib import Path

import click

from deeplab_geo.cli._common import reports_errors


@click.command("export-onnx")
@click.argument("checkpoint")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The .onnx file to write (its .json metadata goes beside it).")
@click.option("--opset", default=17, show_default=True, help="ONNX opset version.")
@reports_errors
def command(checkpoint: str, out: Path, opset: int) -> None:
    """Export CHECKPOINT (a .safetensors path or builtin:NAME) with normalisation and softmax."""
    from deeplab_geo.tools.export import export_onnx

    click.echo(export_onnx(checkpoint, out, opset=opset))
