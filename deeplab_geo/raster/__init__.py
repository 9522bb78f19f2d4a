"""Rasters in and out: opening and checking inputs (:mod:`~deeplab_geo.raster.io`, remote and
STAC inputs in :mod:`~deeplab_geo.raster.sources`), cutting them into windows
(:mod:`~deeplab_geo.raster.tiling`, pure geometry), resampling windows to a model's resolution
(:mod:`~deeplab_geo.raster.resample`), stitching tile cores into georeferenced COGs
(:mod:`~deeplab_geo.raster.stitch`), and what a run writes beside them: a STAC Item
(:mod:`~deeplab_geo.raster.stac`) and a quicklook (:mod:`~deeplab_geo.raster.quicklook`)."""
