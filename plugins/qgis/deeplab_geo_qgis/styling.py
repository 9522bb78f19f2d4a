"""Class colours for loaded outputs: a paletted class raster and categorized polygons.

The class raster written by the CLI carries everything needed: a colour table (entry i is class
i) and a ``CLASS_NAMES`` tag (comma-separated names). Styling is attached to outputs through
``QgsProcessingLayerPostProcessorInterface``, which QGIS calls in the main thread once the layer
has been added to the project.
"""

from collections import namedtuple

from osgeo import gdal
from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsSymbol,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

ClassEntry = namedtuple("ClassEntry", "value name colour")

# QGIS keeps only a raw pointer to a post-processor; Python must own it until QGIS is done.
_LIVE_STYLERS = []


def read_class_table(classes_path):
    """``[ClassEntry(value, name, QColor)]`` from a class raster written by deeplab-geo.

    Returns an empty list when the raster has no colour table or no ``CLASS_NAMES`` tag (it was
    not written by deeplab-geo); the caller reports that.
    """
    dataset = gdal.Open(str(classes_path))
    if dataset is None:
        return []
    names = dataset.GetMetadataItem("CLASS_NAMES")
    table = dataset.GetRasterBand(1).GetColorTable()
    if not names or table is None:
        return []
    entries = []
    for value, name in enumerate(names.split(",")):
        if value >= table.GetCount():
            break
        red, green, blue, _alpha = table.GetColorEntry(value)
        entries.append(ClassEntry(value, name, QColor(red, green, blue)))
    return entries


def paletted_renderer(layer, table):
    """A paletted renderer for band 1 of ``layer``: one labelled colour per class."""
    classes = [QgsPalettedRasterRenderer.Class(e.value, e.colour, e.name) for e in table]
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes)


def categorized_renderer(layer, table, field="class_id"):
    """A categorized renderer on ``field``: one fill per class, outlined in a darker shade."""
    categories = []
    for entry in table:
        symbol = QgsSymbol.defaultSymbol(layer.geometryType())
        symbol.setColor(entry.colour)
        symbol.symbolLayer(0).setStrokeColor(entry.colour.darker(150))
        categories.append(QgsRendererCategory(entry.value, symbol, entry.name))
    return QgsCategorizedSymbolRenderer(field, categories)


class ClassStyler(QgsProcessingLayerPostProcessorInterface):
    """Applies the class colours to an output layer once Processing has loaded it."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def postProcessLayer(self, layer, context, feedback):
        if isinstance(layer, QgsRasterLayer):
            layer.setRenderer(paletted_renderer(layer, self.table))
        elif isinstance(layer, QgsVectorLayer):
            layer.setRenderer(categorized_renderer(layer, self.table))
        else:
            return
        layer.triggerRepaint()


def style_when_loaded(context, layer_id, table):
    """Attach a :class:`ClassStyler` to ``layer_id`` if Processing will load that output."""
    if not table or not context.willLoadLayerOnCompletion(layer_id):
        return
    styler = ClassStyler(table)
    _LIVE_STYLERS.append(styler)
    context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(styler)
