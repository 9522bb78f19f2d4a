"""What surrounds the pipeline: synthetic sample scenes (:mod:`~deeplab_geo.tools.sample`),
training and fine-tuning (:mod:`~deeplab_geo.tools.train`), evaluation against labels
(:mod:`~deeplab_geo.tools.evaluate`, over the confusion matrices of
:mod:`~deeplab_geo.tools.metrics`) and ONNX export (:mod:`~deeplab_geo.tools.export`)."""
