"""The ``deeplab_geo`` Processing provider: its algorithms and its one setting."""

from processing.core.ProcessingConfig import ProcessingConfig, Setting
from qgis.core import QgsProcessingProvider

from .algorithms import RunPipelineAlgorithm, SegmentRasterAlgorithm
from .runner import ENV_VAR, EXECUTABLE_SETTING


class DeepLabGeoProvider(QgsProcessingProvider):
    """Provider id ``deeplab_geo``: "Segment raster" and "Run pipeline".

    The CLI writes GeoTIFFs that are moved into place, so raster destinations are GeoTIFFs;
    polygons are copied into a feature sink and may go to any vector format.
    """

    def id(self):
        return "deeplab_geo"

    def name(self):
        return "deeplab-geo"

    def longName(self):
        return "deeplab-geo land-cover segmentation"

    def load(self):
        """Register the executable setting (Options > Processing > Providers) and algorithms."""
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), EXECUTABLE_SETTING, "deeplab-geo executable", "",
            valuetype=Setting.FILE,
            placeholder=f"Leave blank to use ${ENV_VAR} or deeplab-geo on PATH"))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        """Remove the setting registered by :meth:`load`."""
        ProcessingConfig.removeSetting(EXECUTABLE_SETTING)

    def loadAlgorithms(self):
        self.addAlgorithm(SegmentRasterAlgorithm())
        self.addAlgorithm(RunPipelineAlgorithm())

    def supportedOutputRasterLayerExtensions(self):
        return ["tif"]
