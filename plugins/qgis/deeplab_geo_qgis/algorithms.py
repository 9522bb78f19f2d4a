"""The two Processing algorithms: ``deeplab_geo:segment_raster`` and ``deeplab_geo:run_pipeline``.

Both run the ``deeplab-geo`` CLI into a private working folder and publish its outputs to the
destinations the user chose only once the CLI has succeeded, so a failed or cancelled run leaves
nothing behind.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from processing.core.ProcessingConfig import ProcessingConfig
from qgis.core import (
    QgsFeatureSink,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsVectorLayer,
)

from .runner import EXECUTABLE_SETTING, find_executable, run_cli
from .styling import read_class_table, style_when_loaded

DEFAULT_CHECKPOINT = "builtin:landcover-demo"
DEVICES = ["auto", "cpu", "cuda"]
# Suffixes of the files `deeplab-geo run` writes, after the input's stem.
OUTPUT_SUFFIXES = {"classes": "_classes.tif", "confidence": "_confidence.tif",
                   "polygons": ".gpkg", "quicklook": "_quicklook.png", "report": "run.json"}


class _DeepLabGeoAlgorithm(QgsProcessingAlgorithm):
    """What both algorithms share: finding the CLI, a working folder, publishing outputs."""

    def createInstance(self):
        return type(self)()

    def _run_into_workdir(self, args, feedback, progress_span):
        """Run the CLI into a new private working folder; return (workdir, its outputs).

        Args:
            args: called with the working folder; returns the CLI's arguments, to which
                ``--output-dir <workdir>/out`` is added.
            feedback: the algorithm's feedback.
            progress_span: the part of the progress bar (percent) the CLI's tiles fill.

        The working folder is removed here if the run fails or is cancelled; otherwise the
        caller removes it after publishing (see :func:`_remove_workdir`).
        """
        executable = find_executable(ProcessingConfig.getSetting(EXECUTABLE_SETTING))
        workdir = Path(tempfile.mkdtemp(prefix="deeplab-geo-", dir=QgsProcessingUtils.tempFolder()))
        try:
            out = workdir / "out"
            run_cli(executable, [*args(workdir), "--output-dir", str(out)], feedback,
                    cwd=str(workdir), progress_span=progress_span)
            return workdir, find_outputs(out)
        except BaseException:
            _remove_workdir(workdir)
            raise


class SegmentRasterAlgorithm(_DeepLabGeoAlgorithm):
    """Segment one raster layer with a checkpoint: class raster and polygons out."""

    INPUT = "INPUT"
    CHECKPOINT = "CHECKPOINT"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    CRF = "CRF"
    CRF_ITERATIONS = "CRF_ITERATIONS"
    MIN_AREA = "MIN_AREA"
    DEVICE = "DEVICE"
    OUTPUT = "OUTPUT"
    OUTPUT_POLYGONS = "OUTPUT_POLYGONS"
    OUTPUT_CONFIDENCE = "OUTPUT_CONFIDENCE"

    def name(self):
        return "segment_raster"

    def displayName(self):
        return "Segment raster"

    def shortHelpString(self):
        return (
            "Segments a raster into land-cover classes with a DeepLab model by running the "
            "deeplab-geo command line (set under Settings > Options > Processing > Providers > "
            "deeplab-geo, or with $DEEPLAB_GEO_EXECUTABLE).<br><br>"
            "<b>Model checkpoint</b>: a .safetensors file with its .json beside it, an .onnx "
            "export, or a zoo .onnx model (Deepness, GeoDeep) with its metadata; leave empty "
            "for the bundled demo model. A zoo model's own tile size and overlap are used "
            "unless you set them.<br>"
            "<b>Tile size</b> and <b>Tile overlap</b>: windows in pixels; each tile keeps its "
            "core, half the overlap in from its edges. An overlap of -1 takes the model's own "
            "(twice the reach it records, or a zoo model's tiles_overlap). For models that "
            "take any input size the tile size is the largest: tiles shrink to fit the "
            "raster.<br>"
            "<b>Refine with the dense CRF</b> and <b>CRF iterations</b>: DeepLab's fully "
            "connected CRF on each tile (slower, sharper boundaries).<br>"
            "<b>Minimum polygon area</b>: in m² (the pipeline's vectorize.min_area); no polygon "
            "smaller than this is written.<br>"
            "<b>Device</b> (advanced): auto, cpu or cuda.<br>"
            "Outputs: the class raster (GeoTIFF, class ids with the model's colours), the "
            "polygons (class_id, class_name, area_m2, mean_confidence, in the input's CRS; "
            "skipped when not requested) and, if requested, the confidence raster.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(QgsProcessingParameterFile(
            self.CHECKPOINT, "Model checkpoint (empty: bundled demo model)", optional=True,
            fileFilter="Model checkpoints (*.safetensors *.onnx *.pt *.pth);;All files (*.*)"))
        self.addParameter(QgsProcessingParameterNumber(
            self.TILE_SIZE, "Tile size (pixels)", QgsProcessingParameterNumber.Integer,
            defaultValue=1024, minValue=16, maxValue=8192))
        self.addParameter(QgsProcessingParameterNumber(
            self.OVERLAP, "Tile overlap (pixels; -1: the model's own)",
            QgsProcessingParameterNumber.Integer, defaultValue=-1, minValue=-1))
        self.addParameter(QgsProcessingParameterBoolean(
            self.CRF, "Refine with the dense CRF", defaultValue=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.CRF_ITERATIONS, "CRF iterations", QgsProcessingParameterNumber.Integer,
            defaultValue=10, minValue=1, maxValue=100))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_AREA, "Minimum polygon area (m²)", QgsProcessingParameterNumber.Double,
            optional=True, minValue=0))
        device = QgsProcessingParameterEnum(self.DEVICE, "Device", options=DEVICES,
                                            defaultValue=0)
        device.setFlags(device.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(device)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Class raster"))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT_POLYGONS, "Polygons", QgsProcessing.TypeVectorPolygon, optional=True,
            createByDefault=True))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_CONFIDENCE, "Confidence raster", optional=True, createByDefault=False))

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        classes_path = _geotiff_destination(
            self.parameterAsOutputLayer(parameters, self.OUTPUT, context))
        confidence_path = self.parameterAsOutputLayer(parameters, self.OUTPUT_CONFIDENCE,
                                                      context)
        if confidence_path:
            confidence_path = _geotiff_destination(confidence_path)
        want_polygons = parameters.get(self.OUTPUT_POLYGONS) is not None
        pipeline = self._pipeline(parameters, context, layer, want_polygons)

        def args(workdir):
            path = workdir / "pipeline.yaml"
            path.write_text(json.dumps(pipeline, indent=2), encoding="utf-8")  # JSON is YAML
            return ["run", str(path)]

        workdir, outputs = self._run_into_workdir(args, feedback, (0.0, 90.0))
        try:
            table = read_class_table(outputs["classes"])
            if not table:
                feedback.reportError(f"{outputs['classes'].name} has no class table; the "
                                     "outputs keep QGIS's default styles")
            results = {self.OUTPUT: classes_path, self.OUTPUT_POLYGONS: None,
                       self.OUTPUT_CONFIDENCE: None}
            if want_polygons:
                results[self.OUTPUT_POLYGONS] = self._copy_polygons(
                    outputs["polygons"], parameters, context, feedback)
                style_when_loaded(context, results[self.OUTPUT_POLYGONS], table)
            _move(outputs["classes"], classes_path)
            style_when_loaded(context, classes_path, table)
            if confidence_path:
                _move(outputs["confidence"], confidence_path)
                results[self.OUTPUT_CONFIDENCE] = confidence_path
        finally:
            _remove_workdir(workdir)
        feedback.setProgress(100)
        return results

    def _pipeline(self, parameters, context, layer, want_polygons):
        checkpoint = (self.parameterAsFile(parameters, self.CHECKPOINT, context) or "").strip()
        if not checkpoint:
            checkpoint = DEFAULT_CHECKPOINT
        elif not checkpoint.startswith("builtin:"):
            checkpoint = os.path.abspath(checkpoint)
        device = DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]
        model = {"checkpoint": checkpoint, "device": device}
        tiling = {"tile_size": self.parameterAsInt(parameters, self.TILE_SIZE, context)}
        overlap = self.parameterAsInt(parameters, self.OVERLAP, context)
        if overlap >= 0:
            tiling["overlap"] = overlap  # else auto: from the model's reach or tiles_overlap
        if checkpoint.lower().endswith(".onnx"):
            # ONNX Runtime reads it; a zoo model with a fixed input sets its own tiles
            model["backend"] = "onnx"
            if tiling["tile_size"] == self.parameterDefinition(self.TILE_SIZE).defaultValue():
                del tiling["tile_size"]  # left at the dialog's default: the model's own
        return {
            "input": raster_file(layer),
            "output_dir": "out",
            "model": model,
            "tiling": tiling,
            "crf": {"enabled": self.parameterAsBoolean(parameters, self.CRF, context),
                    "iterations": self.parameterAsInt(parameters, self.CRF_ITERATIONS,
                                                      context)},
            "vectorize": {"enabled": want_polygons,
                          "min_area": self.parameterAsDouble(parameters, self.MIN_AREA,
                                                             context)},
            "quicklook": False,
        }

    def _copy_polygons(self, gpkg, parameters, context, feedback):
        """Copy the CLI's polygons into the Polygons sink; return the sink's id."""
        source = QgsVectorLayer(str(gpkg), "polygons", "ogr")
        if not source.isValid():
            raise QgsProcessingException(f"{gpkg}: the polygons written by deeplab-geo cannot "
                                         "be read")
        fields = source.fields()
        fid = fields.indexOf("fid")
        if fid >= 0:
            fields.remove(fid)  # the GeoPackage key; the destination assigns its own
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT_POLYGONS, context, fields,
                                             source.wkbType(), source.crs())
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT_POLYGONS))
        total = max(source.featureCount(), 1)
        for i, feature in enumerate(source.getFeatures()):
            if fid >= 0:
                attributes = feature.attributes()
                del attributes[fid]
                feature.setFields(fields, initAttributes=False)
                feature.setAttributes(attributes)
            sink.addFeature(feature, QgsFeatureSink.FastInsert)
            feedback.setProgress(90.0 + 10.0 * (i + 1) / total)
        sink.flushBuffer()
        return dest_id


class RunPipelineAlgorithm(_DeepLabGeoAlgorithm):
    """Run a pipeline YAML file as it is, optionally on another raster or into another folder."""

    PIPELINE = "PIPELINE"
    INPUT = "INPUT"
    OVERRIDES = "OVERRIDES"
    OUTPUT_DIR = "OUTPUT_DIR"
    LOAD_OUTPUTS = "LOAD_OUTPUTS"
    CLASSES = "CLASSES"
    CONFIDENCE = "CONFIDENCE"
    POLYGONS = "POLYGONS"
    REPORT = "REPORT"

    def name(self):
        return "run_pipeline"

    def displayName(self):
        return "Run pipeline"

    def shortHelpString(self):
        return (
            "Runs a deeplab-geo pipeline YAML file, exactly as `deeplab-geo run PIPELINE` "
            "would.<br><br>"
            "<b>Pipeline</b>: the YAML file (relative paths inside it resolve against its "
            "folder).<br>"
            "<b>Input raster</b>: optional; replaces the pipeline's input.<br>"
            "<b>Overrides</b>: optional KEY=VALUE lines, each passed as --set, e.g. "
            "crf.enabled=false.<br>"
            "<b>Output folder</b>: optional; by default the pipeline's output_dir.<br>"
            "<b>Open outputs</b>: add the class raster and polygons to the project, in the "
            "class colours.<br>"
            "Outputs: the class raster, the confidence raster, the polygons, run.json and the "
            "output folder.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(
            self.PIPELINE, "Pipeline (YAML)", fileFilter="Pipeline files (*.yaml *.yml)"))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.INPUT, "Input raster (replaces the pipeline's input)", optional=True))
        overrides = QgsProcessingParameterString(
            self.OVERRIDES, "Overrides (KEY=VALUE, one per line)", multiLine=True,
            optional=True)
        overrides.setFlags(overrides.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(overrides)
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.OUTPUT_DIR, "Output folder (default: the pipeline's output_dir)", optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterBoolean(
            self.LOAD_OUTPUTS, "Open the class raster and polygons in the project",
            defaultValue=True))
        self.addOutput(QgsProcessingOutputRasterLayer(self.CLASSES, "Class raster"))
        self.addOutput(QgsProcessingOutputRasterLayer(self.CONFIDENCE, "Confidence raster"))
        self.addOutput(QgsProcessingOutputVectorLayer(self.POLYGONS, "Polygons",
                                                      QgsProcessing.TypeVectorPolygon))
        self.addOutput(QgsProcessingOutputFile(self.REPORT, "Run report (run.json)"))

    def processAlgorithm(self, parameters, context, feedback):
        pipeline = os.path.abspath(self.parameterAsFile(parameters, self.PIPELINE, context))
        target = None
        if parameters.get(self.OUTPUT_DIR) is not None:
            target = self.parameterAsFileOutput(parameters, self.OUTPUT_DIR, context) or None
        if target is None:
            target = declared_output_dir(pipeline)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        overrides = self.parameterAsString(parameters, self.OVERRIDES, context)
        cli_args = ["run", pipeline]
        if layer is not None:
            cli_args += ["--input", raster_file(layer)]
        for line in overrides.splitlines():
            if line.strip():
                cli_args += ["--set", line.strip()]

        workdir, outputs = self._run_into_workdir(lambda _: cli_args, feedback, (0.0, 100.0))
        try:
            if target is None:
                raise QgsProcessingException(
                    f"{pipeline}: cannot read output_dir from the pipeline; choose an Output "
                    "folder")
            table = read_class_table(outputs["classes"])
            published = publish(outputs, Path(target))
        finally:
            _remove_workdir(workdir)
        for key, path in published.items():
            feedback.pushInfo(f"{key}: {path}")
        if self.parameterAsBoolean(parameters, self.LOAD_OUTPUTS, context):
            self._load(context, published, table)
        return {self.OUTPUT_DIR: str(target),
                self.CLASSES: str(published["classes"]),
                self.CONFIDENCE: str(published["confidence"]) if "confidence" in published
                else None,
                self.POLYGONS: str(published["polygons"]) if "polygons" in published else None,
                self.REPORT: str(published["report"])}

    def _load(self, context, published, table):
        """Add the class raster and the polygons to the project, styled by class."""
        if context.project() is None:
            return
        layers = [("classes", self.CLASSES, QgsProcessingUtils.LayerHint.Raster),
                  ("polygons", self.POLYGONS, QgsProcessingUtils.LayerHint.Vector)]
        for key, output_name, hint in layers:
            if key not in published:
                continue
            path = str(published[key])
            details = QgsProcessingContext.LayerDetails(published[key].stem, context.project(),
                                                        output_name, hint)
            context.addLayerToLoadOnCompletion(path, details)
            style_when_loaded(context, path, table)


def raster_file(layer):
    """The file a GDAL raster layer reads, for the CLI; other providers are refused."""
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"{layer.name()}: deeplab-geo reads raster files through GDAL, not "
            f"'{layer.providerType()}' layers; save the layer as a GeoTIFF first")
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    return parts.get("path") or layer.source()


def declared_output_dir(pipeline):
    """The pipeline's ``output_dir`` as an absolute path (relative to the YAML's folder).

    Returns ``None`` when the file cannot be read as a YAML mapping: the CLI then reports the
    problem in its own words.

    Raises:
        QgsProcessingException: the mapping has no ``output_dir`` path.
    """
    try:
        with open(pipeline, encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    value = data.get("output_dir")
    if not isinstance(value, str) or not value.strip():
        raise QgsProcessingException(
            f"{pipeline}: the pipeline has no output_dir; add one or choose an Output folder")
    return str((Path(pipeline).parent / value).resolve())


def find_outputs(folder):
    """The files of one ``deeplab-geo run`` in ``folder``, by kind (see OUTPUT_SUFFIXES)."""
    found = {}
    for path in sorted(Path(folder).iterdir()):
        for key, suffix in OUTPUT_SUFFIXES.items():
            if path.is_file() and path.name.endswith(suffix) and key not in found:
                found[key] = path
                break
    for required in ("classes", "report"):  # confidence is optional (outputs.confidence)
        if required not in found:
            raise QgsProcessingException(
                f"deeplab-geo finished but wrote no *{OUTPUT_SUFFIXES[required]} in {folder}")
    return {key: found[key] for key in OUTPUT_SUFFIXES if key in found}


def publish(outputs, folder):
    """Move finished outputs into ``folder`` (created if missing), replacing older ones."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QgsProcessingException(f"{folder}: cannot create the output folder "
                                     f"({exc.strerror})") from None
    return {key: _move(path, folder / path.name) for key, path in outputs.items()}


def _geotiff_destination(path):
    """Check a raster destination before the (long) run: a .tif in an existing folder."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        raise QgsProcessingException(f"{path}: deeplab-geo writes GeoTIFFs; give a .tif file "
                                     "name")
    if not Path(path).parent.is_dir():
        raise QgsProcessingException(f"{path}: the folder {Path(path).parent} does not exist; "
                                     "choose an existing folder")
    return path


def _move(source, destination):
    """Move a file into place, atomically where the two are on one filesystem."""
    destination = Path(destination)
    try:
        os.replace(source, destination)
    except OSError:
        partial = destination.with_name(f".{destination.name}.part")
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, destination)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise QgsProcessingException(f"{destination}: cannot write the output "
                                         f"({exc.strerror})") from None
    return destination


def _remove_workdir(workdir):
    shutil.rmtree(workdir, ignore_errors=True)
