# The README's two commands: `make demo` and `make test`. Both set everything up from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test evaluate-demo train-demo lint clean

$(STAMP): pyproject.toml plugins/onnx/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]' -e plugins/onnx
	touch $(STAMP)

data/sample/orthophoto.tif: | $(STAMP)
	$(BIN)/deeplab-geo sample --out data/sample --seed 0 --size 2048

## Segment the bundled sample with the bundled model: output/landcover/
demo: $(STAMP) data/sample/orthophoto.tif
	$(BIN)/deeplab-geo run pipelines/landcover.yaml

## The held-out scene's mIoU without and with the dense CRF
evaluate-demo: $(STAMP) data/sample/orthophoto.tif
	$(BIN)/deeplab-geo evaluate pipeline pipelines/landcover.yaml --labels data/sample/labels.tif

## Retrain the bundled demo model (about 40 minutes on 2 CPU cores)
train-demo: $(STAMP)
	$(BIN)/deeplab-geo train pipelines/train_landcover_demo.yaml

## Run the test suite (slow tests: make test PYTEST_ARGS=--run-slow)
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check deeplab_geo tests benchmarks

clean:
	rm -rf output data/sample
