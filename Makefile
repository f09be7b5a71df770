# `make demo` and `make test` each create .venv if it is missing and install into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
ECDCTR := $(VENV)/bin/ecdctr
STAMP := $(VENV)/.installed

DEMO ?= demo
# Twelve busy days: the evaluation day holds 4,000 ad rows and about 220 clicks (enough for
# its AUC to mean something), and simulate + daily read fewer rows than 90 days of the
# simulator's default size (measured 15% faster). Ads are clicked about as often as organic items.
DEMO_START ?= 2026-03-20
DEMO_DAYS ?= 12
DEMO_DATE ?= 2026-03-31
DEMO_SEED ?= 0
DEMO_ROWS_PER_DAY ?= 40000
DEMO_AD_CTR_OFFSET ?= 0.7

.PHONY: install demo test lint bench lock clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(ECDCTR) simulate --out=$(DEMO)/logs --start=$(DEMO_START) --days=$(DEMO_DAYS) --seed=$(DEMO_SEED) \
		--rows_per_day=$(DEMO_ROWS_PER_DAY) --ad_ctr_offset=$(DEMO_AD_CTR_OFFSET)
	$(ECDCTR) daily --config=configs/demo.yaml --date=$(DEMO_DATE)
	zcat $(DEMO)/logs/ad/date=$(DEMO_DATE)/*.jsonl.gz | head -n 5 > $(DEMO)/sample.jsonl
	@echo "click probabilities of 5 held-out ad impressions from $(DEMO)/sample.jsonl:"
	$(ECDCTR) predict --model=$(DEMO)/export/actr --input=$(DEMO)/sample.jsonl

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Two test processes (pytest-xdist; tests/conftest.py keeps each module's tests on one of them).
test: $(STAMP) lint
	$(PY) -m pytest -q -n 2

# Every throughput, latency and memory figure of benchmarks/BENCHMARKS.md (about 1.5 h on a
# busy 2-core machine, most of it eval_memory's 5M-row day); each script also runs alone.
bench: $(STAMP)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/tfrecord_writers.py
	$(PY) benchmarks/build_memory.py
	$(PY) benchmarks/serving.py --repeats 5
	$(PY) benchmarks/eval_memory.py

# Re-resolve the transitive pins after editing requirements.txt.
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^ecdctr' > constraints.txt

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
