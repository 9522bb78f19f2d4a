"""``deeplab-geo schema``: the JSON Schema of pipeline (or training) YAML files.

    deeplab-geo schema > pipeline.schema.json
    deeplab-geo schema --train > train.schema.json

Editors that speak the YAML language server complete and check keys of a file that starts with
``# yaml-language-server: $schema=pipeline.schema.json``; the shipped pipelines do.
"""

from __future__ import annotations

import json

import click


@click.command("schema")
@click.option("--train", is_flag=True, help="The training schema instead of the pipeline's.")
def command(train: bool) -> None:
    """Print the JSON Schema of pipeline YAML files (or, with --train, training files)."""
    from deeplab_geo.config import json_schema

    click.echo(json.dumps(json_schema("train" if train else "pipeline"), indent=2))
