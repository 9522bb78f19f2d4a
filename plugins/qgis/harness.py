"""Run one deeplab-geo algorithm inside QGIS, in-process, and write a JSON report.

For tests (``tests/test_qgis.py``) and for debugging the plugin without the desktop. Run it with
the Python that QGIS uses (Debian: ``/usr/bin/python3``)::

    QT_QPA_PLATFORM=offscreen python3 plugins/qgis/harness.py request.json

``request.json`` holds ``algorithm`` (an id), ``parameters`` (a mapping), ``report`` (where the
report goes) and optionally ``load`` (load outputs into a project, as the toolbox does),
``cancel_on_progress`` (cancel as soon as the progress bar first moves) and ``executable``
(a value for the provider's "deeplab-geo executable" setting).

The report holds ``results`` or ``exception``, the progress values, the messages reported as
errors and as information, the command lines run, this process's id, the renderer of every
layer loaded into the project, and, taken right after the run, the plugin's working folders and
the processes still using them.
"""

import json
import os
import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
)

PLUGINS = Path(__file__).resolve().parent


class RecordingFeedback(QgsProcessingFeedback):
    """Feedback that records what the algorithm reports and can cancel itself."""

    def __init__(self, cancel_on_progress):
        super().__init__()
        self.progress, self.errors, self.infos, self.commands = [], [], [], []
        self.cancel_on_progress = cancel_on_progress
        self.progressChanged.connect(self._on_progress)

    def _on_progress(self, value):
        self.progress.append(value)
        if self.cancel_on_progress and value > 0 and not self.isCanceled():
            self.cancel()

    def reportError(self, error, fatalError=False):
        self.errors.append(error)
        super().reportError(error, fatalError)

    def pushInfo(self, info):
        self.infos.append(info)
        super().pushInfo(info)

    def pushCommandInfo(self, info):
        self.commands.append(info)
        super().pushCommandInfo(info)


def describe_layer(layer):
    """Name, source, renderer type and the renderer's classes, as plain JSON values."""
    renderer = layer.renderer()
    entry = {"name": layer.name(), "source": layer.source(), "renderer": renderer.type()}
    if isinstance(layer, QgsRasterLayer):
        entry["classes"] = [[c.value, c.label, c.color.name()] for c in renderer.classes()] \
            if renderer.type() == "paletted" else []
    else:
        entry["feature_count"] = layer.featureCount()
        if renderer.type() == "categorizedSymbol":
            entry["attribute"] = renderer.classAttribute()
            entry["categories"] = [[c.value(), c.label(), c.symbol().color().name()]
                                   for c in renderer.categories()]
    return entry


def processes_mentioning(text):
    """Command lines of live processes that contain ``text`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command.strip())
    return found


def main(request_path):
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    app = QgsApplication([], False)
    app.initQgis()
    sys.path[:0] = [str(Path(QgsApplication.pkgDataPath()) / "python" / "plugins"), str(PLUGINS)]
    import processing
    from deeplab_geo_qgis.provider import DeepLabGeoProvider
    from deeplab_geo_qgis.runner import EXECUTABLE_SETTING
    from processing.core.Processing import Processing
    from processing.core.ProcessingConfig import ProcessingConfig

    Processing.initialize()
    provider = DeepLabGeoProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    if request.get("executable"):
        ProcessingConfig.setSettingValue(EXECUTABLE_SETTING, request["executable"])

    feedback = RecordingFeedback(request.get("cancel_on_progress", False))
    run = processing.runAndLoadResults if request.get("load") else processing.run
    report = {"results": None, "exception": None}
    try:
        results = run(request["algorithm"], dict(request["parameters"]), feedback=feedback)
        report["results"] = {k: v if isinstance(v, (str, int, float, type(None))) else str(v)
                             for k, v in results.items()}
    except QgsProcessingException as exc:
        report["exception"] = str(exc)
    temp = QgsProcessingUtils.tempFolder()
    report.update(progress=feedback.progress, errors=feedback.errors, infos=feedback.infos,
                  commands=feedback.commands, pid=os.getpid(),
                  cancelled=feedback.isCanceled(),
                  workdirs_left=sorted(str(p) for p in Path(temp).glob("deeplab-geo-*")),
                  processes_left=processes_mentioning(temp),
                  layers=[describe_layer(layer)
                          for layer in QgsProject.instance().mapLayers().values()])
    Path(request["report"]).write_text(json.dumps(report, indent=2), encoding="utf-8")
    QgsProject.instance().clear()
    QgsApplication.processingRegistry().removeProvider(provider)
    app.exitQgis()


if __name__ == "__main__":
    main(sys.argv[1])
