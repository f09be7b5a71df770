# `make demo` and `make test` each create .venv if it is missing and install into it.
# Its interpreter: the first of python3.11, python3.12, python3 that is Python 3.11 or 3.12
# (setup.py's python_requires); PYTHON=/path/to/python overrides.
SUPPORTED_PYTHONS := 3.11 3.12
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(f"{sys.version_info[0]}.{sys.version_info[1]}" not in "$(SUPPORTED_PYTHONS)".split())' 2>/dev/null \
	&& { command -v $$p; break; }; done)
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
	@test -x $(PY) || test -n "$(PYTHON)" || { echo "ecdctr needs Python 3.11 or 3.12 and found neither" \
		"(python3.11, python3.12, python3). Install one (e.g. apt install python3.12 python3.12-venv," \
		"or pyenv install 3.12) or pass PYTHON=/path/to/python3.12." >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -c 'import sys; v = f"{sys.version_info[0]}.{sys.version_info[1]}"; \
		sys.exit(0 if v in "$(SUPPORTED_PYTHONS)".split() else f"$(PYTHON) is Python {v}; ecdctr needs 3.11 or 3.12. Install one or pass PYTHON=/path/to/python3.12.")'
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
