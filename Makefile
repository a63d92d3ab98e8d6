# medseg-serve: two commands do everything on a fresh machine.
#   make serve   venv + install + demo model repository (if missing or stale) + BentoML on 127.0.0.1:3000
#   make test    the same set-up, then the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 3000
REPOSITORY := model_repository
INSTALLED := $(VENV)/.installed
REPOSITORY_STAMP := $(REPOSITORY)/.built
# The demo repository is rebuilt when anything the build reads changes (not the trainers, phantoms
# or benchmarks: retraining writes new files under export/weights/, which are read).
EXPORT_INPUTS := $(shell find export/registry export/models export/checkpoints export/triton export/weights \
		-name '*.py' -o -name '*.safetensors' -o -name '*.json' 2>/dev/null) \
	export/__main__.py export/repository.py export/onnx_export.py export/weights_io.py export/hashing.py \
	services/contract.py services/preprocess.py pyproject.toml

.PHONY: serve serve-triton pacs test install repository bench bento clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable ".[serving,export,load,triton,dev]"
	@touch $@

repository: $(REPOSITORY_STAMP)

$(REPOSITORY_STAMP): $(INSTALLED) $(EXPORT_INPUTS)
	$(BIN)/python -m export build --model all --variant small --repository $(REPOSITORY)
	@touch $@

serve: $(REPOSITORY_STAMP)
	MEDSEG_BACKEND=embedded MEDSEG_MODEL_REPOSITORY=$(REPOSITORY) \
		$(BIN)/bentoml serve services.service:Segmenter --host $(HOST) --port $(PORT)

# The same service in front of a real tritonserver (the nvidia-pytriton wheel's, python backend)
# on 127.0.0.1:8000-8002 serving the same repository; Ctrl-C stops both.
serve-triton: $(REPOSITORY_STAMP)
	$(BIN)/python -m load.serve_triton --repository $(REPOSITORY) --host $(HOST) --port $(PORT)

# The service wired to a real Orthanc PACS (Debian: orthanc orthanc-dicomweb orthanc-python) on
# 127.0.0.1:3000 and :8042: stable CT/MR series uploaded to Orthanc come back with a DICOM SEG.
pacs: $(REPOSITORY_STAMP)
	$(BIN)/python -m load.pacs --repository $(REPOSITORY) --port $(PORT)

test: $(REPOSITORY_STAMP)
	$(BIN)/python -m pytest

bench: $(REPOSITORY_STAMP)
	$(BIN)/python -m load bench

# Headless locust run (load/locustfile.py) of LOAD_SCENARIOS (segment) with LOAD_USERS (8) for
# LOAD_TIME (60s) against LOAD_HOST (http://127.0.0.1:3000; if nothing answers there the service
# is started for the run and stopped), judged against LOAD_SLO (load/slo.json): non-zero exit on a
# violation. build/load/<timestamp>/: report.html, CSV stats and history, latency.png, summary.json.
.PHONY: load
load: $(REPOSITORY_STAMP)
	$(BIN)/python -m load.load_run

clean:
	rm -rf $(VENV) $(REPOSITORY)/*/ $(REPOSITORY_STAMP)

# A Bento with the serving dependencies only (the [serving] extra of pyproject.toml).
bento: $(REPOSITORY_STAMP)
	@mkdir -p build
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['serving']))" > build/requirements-serving.txt
	$(BIN)/bentoml build
