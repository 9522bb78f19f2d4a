"""Built-in inference backends (each a plugin module, see :mod:`deeplab_geo.hookspecs`)."""
