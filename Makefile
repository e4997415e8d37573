# skiff: `make run` sets everything up and runs the demo; `make test` sets everything up and runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-stamp
SYSTEM_STAMP := .stamp-system-deps
WORKERS ?= 2
PYTEST_ARGS ?=

.PHONY: all setup system-deps venv bpf run test lint clean bench bench-conn bench-pair
.DELETE_ON_ERROR:

all: setup

setup: system-deps venv bpf

system-deps: $(SYSTEM_STAMP)

$(SYSTEM_STAMP): scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	touch $@

venv: $(DEPS_STAMP)

$(DEPS_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) scripts/requirements.py test > $(VENV)/requirements.txt
	$(PY) -m pip install -q -r $(VENV)/requirements.txt
	touch $@

bpf: system-deps
	$(MAKE) -C bpf

run: setup
	bash scripts/run-demo.sh config.json -w $(WORKERS) --steering auto

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmark against HAProxy (not part of `make test`): installs haproxy, nginx, wrk and iperf3 when
# missing, runs 3 interleaved rounds and the paired must (about 12 minutes) into bench/BENCHMARKS.md; then
# TLS termination against HAProxy (about 2 minutes) into bench/TLS.md.
bench: setup
	bash bench/setup.sh
	$(PY) bench/run.py --rounds 3 --out bench/BENCHMARKS.md
	$(PY) bench/tls.py --rounds 3 --out bench/TLS.md

# Connection rate only, in minutes: HAProxy, the floor relay, skiff -w 1 and -w 2, 3 interleaved rounds of 5 s.
# A/B against a git ref: `make bench-conn AB=main` adds that ref's skiff (exported with git archive) as a target.
AB ?=
BENCH_CONN_ARGS ?=
bench-conn: venv
	bash bench/setup.sh
	$(PY) bench/bench_conn.py $(if $(AB),--ab $(AB)) $(BENCH_CONN_ARGS)

# Two proxies loaded at once on one pinned core (about 30 s): their rate ratio resolves 1-2 %, where sequential
# rounds on this shared machine move 15 %. `make bench-pair A=skiff B=ref:main` (targets: floor, skiff,
# ref:GIT-REF, dir:PATH; BENCH_PAIR_ARGS="--rounds 7 --workers 2").
A ?= skiff
B ?= floor
BENCH_PAIR_ARGS ?=
bench-pair: venv
	bash bench/setup.sh
	$(PY) bench/bench_pair.py $(A) $(B) $(BENCH_PAIR_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy supervisor.py proxy workers control bpf tester skiffctl

clean:
	rm -rf $(VENV) $(SYSTEM_STAMP) .pytest_cache .mypy_cache .ruff_cache
	$(MAKE) -C bpf clean

# skiff as a system service: the tree, its venv and the BPF object under PREFIX, the skiff user, the example
# config at /etc/skiff/config.json (never overwritten), the unit and the sysctl file. DESTDIR stages it all
# without touching the host (scripts/install.sh says what each variable does).
PREFIX ?= /opt/skiff
.PHONY: install uninstall
install:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) PYTHON=$(PYTHON) bash scripts/install.sh install

uninstall:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) bash scripts/install.sh uninstall
