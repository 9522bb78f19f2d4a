"""deeplab-geo: DeepLab segmentation of large aerial and satellite rasters.

The pipeline reads a raster, cuts it into overlapping windows, runs a DeepLab model through a
pluggable backend, refines each tile with a fully connected CRF, stitches the tiles into a
georeferenced class raster and vectorizes it into GeoPackage polygons.
"""

__version__ = "0.1.0"
