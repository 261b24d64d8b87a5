# feedrec: the two commands a newcomer types are `make run` and `make test`.
# Everything installs itself into .venv on first use (Python 3.11).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip.conf on some machines lists local indexes that may be absent; hide that noise.
QUIET_PIP := 2>&1 | { grep -v -e 'WARNING: Location' -e '^\s*$$' || true; }
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# DATA: synthetic, movielens or a dataset YAML (feature config + data: globs).
DATA ?= synthetic
WORK ?= work
SERVE_FLAGS ?=
# Extra bench flags, e.g. BENCH_FLAGS="--quick --seeds 1".
BENCH_FLAGS ?=
# The benches run both built-in datasets unless DATA is given (command line or environment).
COMMA := ,
BENCH_DATASETS := $(if $(filter file,$(origin DATA)),synthetic$(COMMA)movielens,$(DATA))
# `make query U=u1`: the user to recommend for (not USER, which is the login's name).
U ?=
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
# The stale protobuf<5 pin of ml-metadata 1.17 is expected to fail `pip check`.
TFX_NO_DEPS := tfx==1.21.0 ml-pipelines-sdk==1.21.0 ml-metadata==1.17.1

.PHONY: install install-bench system-deps run test data bench-sessionize bench-ranking \
        bench-recall bench-training-scale bench-funnel bench-faiss bench-serving serve query clean

install: $(STAMP)

$(STAMP): requirements.lock setup.py beam_jobs/_fastloops.c
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip 'setuptools<80' wheel $(QUIET_PIP)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock $(QUIET_PIP)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(TFX_NO_DEPS) $(QUIET_PIP)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . $(QUIET_PIP)
	@touch $(STAMP)

install-bench: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-bench.txt $(QUIET_PIP)
	@# deepctr 0.9.3 pins h5py 3.7 (no Python 3.11 wheel); it runs on the h5py we have.
	$(BIN)/pip install -q --disable-pip-version-check --no-deps deepctr==0.9.3 $(QUIET_PIP)
	@touch $(BENCH_STAMP)

# Servers the tests start themselves (real redis-server for the Redis store).
system-deps:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }

run: install
	$(PYTHON) -m pipelines.local_runner --data $(DATA) --work_dir $(WORK)

# Two pytest workers for the 2 cores; --dist loadfile keeps a file's tests on one worker, so a
# module fixture (a whole pipeline run) is built once. test_distributed runs after, alone:
# tf.distribute leaves its cluster as the process's TensorFlow context, and tests that a shared
# worker runs later then fail with "unknown device".
test: install-bench system-deps
	$(PYTHON) -m pytest -q -n 2 --dist loadfile --durations=25 tests \
	    --ignore=tests/models/test_distributed.py
	$(PYTHON) -m pytest -q --durations=5 tests/models/test_distributed.py
	@# The sessionize job's tests again on its Python loops (the compiled ones ran above).
	FEEDREC_PURE_PYTHON=1 $(PYTHON) -m pytest -q -n 2 tests/beam_jobs

data: install
	$(PYTHON) -m beam_jobs.datasets --data $(DATA) --work_dir $(WORK)

bench-sessionize: install
	$(PYTHON) -m bench.sessionize_bench

# One process per dataset (synthetic, MovieLens): the 2 cores run both at once.
# With DATA=other.yaml the JSON goes under work/ (bench/results/ holds the built-in runs).
bench-ranking: install-bench
	$(PYTHON) -m bench.ranking_bench --jobs 2 --datasets $(BENCH_DATASETS) $(BENCH_FLAGS)

bench-recall: install-bench
	$(PYTHON) -m bench.recall_bench --datasets $(BENCH_DATASETS) $(BENCH_FLAGS)

# The whole funnel offline: trains every served model per dataset, pushes them into a private
# serving layout and replays the eval requests through the Recommender (one process per dataset).
bench-funnel: install-bench
	$(PYTHON) -m bench.funnel_bench --datasets $(BENCH_DATASETS) $(BENCH_FLAGS)

# Examples/s of one process vs 1 and 2 local workers + 2 PS (ParameterServerStrategy): on the
# 2-core box this measures the distributed path's overhead, not speedup.
bench-training-scale: install
	$(PYTHON) -m bench.training_scale

bench-faiss: install
	$(PYTHON) -m bench.faiss_bench

bench-serving: install system-deps
	$(PYTHON) -m bench.serving_bench

serve: install
	$(PYTHON) -m serving.serve --work_dir $(WORK) $(if $(filter file,$(origin DATA)),,--data $(DATA)) $(SERVE_FLAGS)

query: install
	@test -n "$(U)" || { echo "usage: make query U=<user id>" >&2; exit 2; }
	$(PYTHON) -m serving.query --user $(U) --work_dir $(WORK)

clean:
	rm -rf $(WORK) .pytest_cache
