# The two front-door commands: `make demo` (set up + end-to-end demo) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-output
# The token of the Ray clusters you start (`make head`, `ray up cluster.yaml`): made once, kept
# out of the repository, readable by you alone. Clients send it from RAY_AUTH_TOKEN_PATH.
RAY_AUTH_TOKEN_PATH ?= $(HOME)/.config/detr-ray/auth_token
HEAD_PORT ?= 6379
DASHBOARD_PORT ?= 8265
HEAD_ARGS ?=

.PHONY: demo test test-fast bench bench-gpu install clean token head stop-head

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python jobs/demo.py --out $(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup

# The inner loop: every test that needs no Ray cluster and exports no graph (ONNX / torch.export).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup -m "not ray and not export and not bench"

bench: $(STAMP)
	$(VENV)/bin/python -m bench.forward_vs_huggingface

# Every GPU figure in one command (bench/gpu.py; ~8 minutes on one GPU). Where the project is not
# installed (a GPU machine's own Python with torch), run `python -m bench.gpu` from the checkout.
bench-gpu:
	$(if $(wildcard $(STAMP)),$(VENV)/bin/python,python3) -m bench.gpu

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[dev,export,mlflow]'
	touch $(STAMP)

token:
	@test -s $(RAY_AUTH_TOKEN_PATH) || (mkdir -p $(dir $(RAY_AUTH_TOKEN_PATH)) && umask 077 && \
		$(PYTHON) -c 'import secrets; print(secrets.token_hex(32), end="")' > $(RAY_AUTH_TOKEN_PATH))
	@echo "token: $(RAY_AUTH_TOKEN_PATH)"

# A Ray head on this machine, from the project's environment (so a submitted job's `python` is
# the project's), with token authentication and its dashboard / job API on 127.0.0.1:$(DASHBOARD_PORT);
# recorded, so that `make stop-head` stops it and no other Ray (pipeline/cluster/head.py).
# HEAD_ARGS: more `ray start` arguments (e.g. --num-cpus=4).
head: $(STAMP) token
	RAY_AUTH_TOKEN_PATH=$(RAY_AUTH_TOKEN_PATH) $(VENV)/bin/python -m pipeline.cluster.head start \
		--port $(HEAD_PORT) --dashboard-port $(DASHBOARD_PORT) -- $(HEAD_ARGS)

stop-head:
	$(VENV)/bin/python -m pipeline.cluster.head stop --port $(HEAD_PORT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info
