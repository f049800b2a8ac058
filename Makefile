# genlab: every target creates the virtual environment (.venv) first when it is missing.
# `make help` lists the targets.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MODEL  ?= vae
ARGS   ?=
COUNT  ?=
SWEEP  ?=
# make sample / make eval: the run (folder or .ckpt) and the sampling options they pass on when set
RUN    ?=
N      ?=
SEED   ?=
LABEL  ?=
STEPS  ?=
GUIDANCE ?=
PROMPT ?=
TEMPERATURE ?=
EXPORT ?=
QUICK  ?=
# make prepare: the data set to convert and the folder for its chunks
SRC    ?=
OUT    ?=
# make export / push (docs/sharing.md): the Hub model repo to push to, the card's licence
REPO   ?=
LICENSE ?=
# make augment / anomaly / detect (docs/applications.md)
HOLDOUT ?= 7
RUNS   ?=
# make demo: the port of the page
PORT   ?= 7860

.DEFAULT_GOAL := help
.PHONY: help install train prepare sweep agent sample eval export push demo results augment anomaly detect test test-all lint format bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# The stamp is rebuilt when pyproject.toml changes, so a later call reuses the environment at once.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	@touch $@

install: $(VENV)/.installed  ## create .venv and install genlab with its dev tools and the demo page

train: install  ## train a family on its default data: make train MODEL=vae ARGS="trainer.max_epochs=5"
	$(PY) -m genlab.train model=$(MODEL) $(ARGS)

prepare: install  ## convert data once into chunks for data=streaming: make prepare SRC=<image folder|mnist|cifar10|text file|latents.pt> OUT=<dir>
	@test -n "$(SRC)" || { echo "make prepare: give the data: SRC=<image folder | mnist | cifar10 | text file>" >&2; exit 2; }
	@test -n "$(OUT)" || { echo "make prepare: give the folder for the chunks: OUT=<dir> (new or empty)" >&2; exit 2; }
	$(PY) -m genlab.prepare "$(SRC)" "$(OUT)" $(ARGS)

# The agent starts each run as `python -m genlab.train ...` with the first python on PATH: ours.
sweep: install  ## W&B sweep from configs/sweep/$(MODEL).yaml plus an agent here: make sweep MODEL=vae COUNT=10
	@test -f configs/sweep/$(MODEL).yaml || { echo "make sweep: no configs/sweep/$(MODEL).yaml; there are: $$(ls configs/sweep)" >&2; exit 2; }
	@log=$$(mktemp); $(VENV)/bin/wandb sweep configs/sweep/$(MODEL).yaml 2>&1 | tee $$log; \
	id=$$(sed -n 's/.*wandb agent \([^ ]*\).*/\1/p' $$log | tail -n 1); rm -f $$log; \
	test -n "$$id" || { echo "make sweep: no sweep id in the output of wandb sweep (wandb login?)" >&2; exit 1; }; \
	$(MAKE) --no-print-directory agent SWEEP=$$id COUNT=$(COUNT)

agent: install  ## join a sweep from any machine: make agent SWEEP=entity/project/id [COUNT=5]
	@test -n "$(SWEEP)" || { echo "make agent: give the sweep: SWEEP=entity/project/id (make sweep prints it)" >&2; exit 2; }
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/wandb agent $(if $(COUNT),--count $(COUNT)) $(SWEEP)

sample: install  ## draw from a run: make sample RUN=logs/vae/<run> N=64 [SEED= LABEL= STEPS= GUIDANCE= PROMPT= PROMPTS=file TEMPERATURE= EXPORT=dir WATERMARK=false]
	@test -n "$(RUN)" || { echo "make sample: give the run: RUN=logs/<model>/<run folder> (or a .ckpt)" >&2; exit 2; }
	$(PY) -m genlab.sample $(RUN) $(if $(N),n=$(N)) $(if $(SEED),seed=$(SEED)) $(if $(LABEL),label=$(LABEL)) \
		$(if $(STEPS),steps=$(STEPS)) $(if $(GUIDANCE),guidance=$(GUIDANCE)) $(if $(TEMPERATURE),temperature=$(TEMPERATURE)) \
		$(if $(PROMPT),"prompt=$(PROMPT)") $(if $(PROMPTS),"prompts=$(PROMPTS)") $(if $(EXPORT),export=$(EXPORT)) \
		$(if $(WATERMARK),watermark=$(WATERMARK)) $(ARGS)

eval: install  ## score a run (FID/KID/PRDC, test bits/dim or loss): make eval RUN=logs/vae/<run> [N=1000 SEED=0]
	@test -n "$(RUN)" || { echo "make eval: give the run: RUN=logs/<model>/<run folder> (or a .ckpt)" >&2; exit 2; }
	$(PY) -m genlab.evaluate $(RUN) $(if $(N),n=$(N)) $(if $(SEED),seed=$(SEED)) \
		$(if $(GUIDANCE),guidance=$(GUIDANCE)) $(if $(STEPS),steps=$(STEPS)) $(ARGS)

export: install  ## a model folder (safetensors, config, tokenizer, model card): make export RUN=logs/<model>/<run> OUT=<dir>
	@test -n "$(RUN)" || { echo "make export: give the run: RUN=logs/<model>/<run folder> (or a .ckpt)" >&2; exit 2; }
	@test -n "$(OUT)" || { echo "make export: give the model folder to write: OUT=<dir> (new or empty)" >&2; exit 2; }
	$(PY) -m genlab.export $(RUN) out=$(OUT) $(if $(N),n=$(N)) $(if $(SEED),seed=$(SEED)) $(if $(LICENSE),license=$(LICENSE)) $(ARGS)

push: install  ## export a run (or take an exported folder) and upload it to the Hub: make push RUN=<run> REPO=<user>/<name>
	@test -n "$(RUN)" || { echo "make push: give the run or exported folder: RUN=logs/<model>/<run folder>" >&2; exit 2; }
	@test -n "$(REPO)" || { echo "make push: give the Hub model repo: REPO=<user>/<name>" >&2; exit 2; }
	$(PY) -m genlab.export $(RUN) repo=$(REPO) $(if $(OUT),out=$(OUT)) $(if $(LICENSE),license=$(LICENSE)) $(ARGS)

demo: install  ## a local web page to try runs, one tab each: make demo RUN=logs/diffusion/<run>[,logs/gpt/<run>] [PORT=7860]
	@test -n "$(RUN)" || { echo "make demo: give the runs: RUN=logs/<model>/<run folder>[,<another>] (or .ckpt, or an exported folder)" >&2; exit 2; }
	$(PY) -m genlab.demo "$(RUN)" port=$(PORT) $(ARGS)

results: install  ## train + evaluate every family, write docs/results.md (~40 min on 2 cores); QUICK=1: a smoke run
	$(PY) -m genlab.results $(if $(QUICK),--quick) $(ARGS)

augment: install  ## synthetic data for a 10-per-class classifier: make augment RUN=logs/diffusion/<run> (conditional)
	@test -n "$(RUN)" || { echo "make augment: give a conditional model's run: RUN=logs/diffusion/<run folder> (or a .ckpt)" >&2; exit 2; }
	$(PY) -m genlab.apps.augment $(RUN) $(if $(N),n=$(N)) $(ARGS)

anomaly: install  ## train MODEL without class HOLDOUT, AUROC of its score vs nearest neighbour: make anomaly MODEL=flow HOLDOUT=7
	$(PY) -m genlab.apps.anomaly model=$(MODEL) holdout=$(HOLDOUT) $(ARGS)

detect: install  ## real-vs-generated detector per family: make detect [RUNS=logs/vae/<run>,logs/gan/<run>] (none: trains each briefly)
	$(PY) -m genlab.apps.detect $(if $(RUNS),runs=$(RUNS)) $(ARGS)

test: install  ## run the fast test suite (offline, CPU, a few minutes)
	$(PY) -m pytest -q

test-all: install  ## run every test, the slow ones too
	$(PY) -m pytest -q -m "not gpu"

lint: install  ## check style with ruff
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

format: install  ## rewrite the code in house style with ruff
	$(PY) -m ruff check --fix src tests bench
	$(PY) -m ruff format src tests bench

# make bench MODEL=<family> runs bench/<family>_step_time.py; latent and dit are modes of the diffusion bench
BENCH_latent := diffusion_step_time.py --latent
BENCH_dit    := diffusion_step_time.py --net dit
bench: install  ## genlab vs a plain PyTorch loop, side by side: make bench MODEL=vae (or autoencoder, latent, dit...; prints the ratio)
	$(PY) bench/$(or $(BENCH_$(MODEL)),$(MODEL)_step_time.py) $(ARGS)

clean:  ## remove caches and build files (keeps .venv, logs/ and data/)
	rm -rf build src/*.egg-info .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
