"""``deeplab-geo backends``: list registered inference backends and where they come from.

Example::

    deeplab-geo backends
"""

from __future__ import annotations

import click

from deeplab_geo.cli._common import reports_errors


@click.command("backends")
@reports_errors
def command() -> None:
    """List the inference backends registered through the ``deeplab_geo`` plugin hooks."""
    from deeplab_geo.plugins import AUTO, choose_backend, device_type, registered_backends

    for name, entry in sorted(registered_backends().items()):
        click.echo(f"{name:<10} {entry.source:<20} {entry.backend.description}")
    device = device_type("auto")
    click.echo(f"\n{AUTO} (model.backend default) on this machine's {device}: "
               f"{choose_backend(AUTO, device)}")
