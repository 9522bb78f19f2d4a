"""The QGIS plugin object: registers the Processing provider, in the GUI and in qgis_process."""

from qgis.core import QgsApplication

from .provider import DeepLabGeoProvider


class DeepLabGeoPlugin:
    """Adds the ``deeplab_geo`` provider to the Processing registry; no GUI of its own."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        """Called by QGIS (and by qgis_process, which has no GUI) to add the provider."""
        if self.provider is None:
            self.provider = DeepLabGeoProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        """The desktop application calls this instead of initProcessing."""
        self.initProcessing()

    def unload(self):
        """Remove the provider when the plugin is disabled or reloaded."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
