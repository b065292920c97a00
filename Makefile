# The two front-door commands: `make demo` (set up + end-to-end demo) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output

.PHONY: demo test bench install clean

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python jobs/demo.py --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python -m bench.forward_vs_huggingface

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info
