# Two commands set up everything on a fresh machine:
#   make demo   -> venv + install + the daily pipeline on the embedded synthetic world for 3 dates
#   make test   -> venv + install + the test suite
#   make lint   -> ruff over the whole tree (config in pyproject.toml); .ci/run runs it before the tests
VENV    ?= .venv
PYTHON  ?= python3.11
UV_VERSION := 0.13.9
# torch is pinned to 2.13.0; on these machines a CPU wheel lies in /opt/wheels. Elsewhere the CPU
# index is named explicitly so that no resolver pulls the CUDA build on a CPU machine.
TORCH_SRC := $(if $(wildcard /opt/wheels/torch-*.whl),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
EXTRAS  ?= airflow,kfp,dev,bench
DEMO_START ?= 2026-01-01
DEMO_END   ?= 2026-01-03

.PHONY: install demo test lint clean

# uv is run as a module so that a fresh `pip install --user` works without ~/.local/bin on PATH.
UV := $(PYTHON) -m uv

$(VENV)/.installed: pyproject.toml Makefile
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q --user uv==$(UV_VERSION) || $(PYTHON) -m pip install -q uv==$(UV_VERSION)
	@test -x $(VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(VENV)
	$(UV) pip install -q --python $(VENV)/bin/python $(TORCH_SRC) -e '.[$(EXTRAS)]' pip
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/onerec pipeline run --start $(DEMO_START) --end $(DEMO_END) --config configs/demo.yaml

test: install
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
