"""deeplab-geo for QGIS: a Processing provider that runs the ``deeplab-geo`` command line.

The plugin never imports torch or deeplab_geo; it runs the CLI of a separate environment as a
subprocess (see :mod:`.runner`), so QGIS's own Python needs nothing beyond QGIS.
"""


def classFactory(iface):
    """Entry point QGIS calls with its interface object (``None`` in ``qgis_process``)."""
    from .plugin import DeepLabGeoPlugin

    return DeepLabGeoPlugin(iface)
