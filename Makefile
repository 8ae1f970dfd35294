# Two commands do all the set-up on a fresh machine: `make demo` and `make test` (see README.md).
# Both create .venv and install the project into it; TORCH_SPEC picks the torch build
# (default: the CPU wheel; e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
RAY_DASHBOARD_PORT ?= 8265
CONFIG ?= configs/smoke.yaml
ARGS ?=

.PHONY: install test browser demo official-hmr official-profiles bench experiments report ui cluster-up cluster-join cluster-down cluster-secrets mlflow-server submit clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m ruff check --no-cache .
	$(PY) -m ruff format --check --no-cache .
	$(PY) -m pytest

# The MLflow UI test drives a real headless Chromium: Debian's package, where this machine can install it
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  ( $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium ) >/dev/null 2>&1 || \
	  echo "note: chromium could not be installed; the MLflow UI test will be skipped"

# docs/design.md §8: synthetic data, 2-worker HMR meta-training of L-SR1 and of LGD, both on the synthetic 3DPW test
# split beside their initializer and L-BFGS; every step in MLflow. Running it again resumes finished runs.
demo: $(STAMP)
	$(PY) -m pipeline.prepare --synthetic
	$(PY) -m pipeline.train --config configs/hmr_demo.yaml --name demo-lsr1 --workers 2
	$(PY) -m pipeline.train --config configs/hmr_demo.yaml --set learner=lgd --set meta.line_search=none --name demo-lgd --workers 2
	$(PY) -m pipeline.evaluate --checkpoint runs/demo-lsr1/best.pt --checkpoint runs/demo-lgd/best.pt \
	  --steps 20 --out runs/demo-comparison --log-experiment hmr_demo
	@printf '\nThe runs in the MLflow UI: make ui   (then http://127.0.0.1:$(UI_PORT), experiment hmr_demo)\n'

# The authors' HMR protocol (configs/hmr_official.yaml) on the synthetic stand-ins at a CPU budget of 150
# meta-iterations (about 20 min each on 2 cores): with their beta-secant slip and with each module's own secant
# term, and LGD by its own protocol at the same budget (batch 128, width 1024, 3 updates, no search); all three on
# the synthetic 3DPW test split for 20 steps beside their ablations and L-BFGS (docs/results.md §9)
SYNTHETIC_HMR := --set hmr.body_dir=datasets/synthetic/body --set hmr.gender=neutral --set hmr.amass_dir=datasets/synthetic/amass \
	--set hmr.pw3d_dir=datasets/synthetic/3dpw --set hmr.prepared_dir=datasets/synthetic/prepared --set hmr.h36m_regressor=null \
	--set hmr.val_skip=1 --set meta.select_metric=val_pa_mpjpe14_smpl
OFFICIAL_HMR_BUDGET := --set meta.iterations=150 --set meta.val_every=50
official-hmr: $(STAMP)
	$(PY) -m pipeline.prepare --synthetic
	$(PY) -m pipeline.train --config configs/hmr_official.yaml $(SYNTHETIC_HMR) $(OFFICIAL_HMR_BUDGET) --name official-hmr --workers 2
	$(PY) -m pipeline.train --config configs/hmr_official.yaml $(SYNTHETIC_HMR) $(OFFICIAL_HMR_BUDGET) --set lsr1.beta_secant=own \
	  --name official-hmr-own --workers 2
	$(PY) -m pipeline.train --config configs/hmr_demo.yaml --set learner=lgd --set meta.line_search=none --set lgd.hidden_dim=1024 \
	  --set hmr.init_hidden_dim=1024 --set task.batch_size=128 --set meta.unroll_steps=3 --set meta.grad_clip=null \
	  $(OFFICIAL_HMR_BUDGET) --name official-hmr-lgd --workers 2
	$(PY) -m pipeline.evaluate --checkpoint runs/official-hmr/best.pt --checkpoint runs/official-hmr-own/best.pt \
	  --checkpoint runs/official-hmr-lgd/best.pt --steps 20 --out runs/official-hmr-comparison --log-experiment hmr_official

# The authors' formulation by their protocol on the profile families, shipped as lsr1/weights/<family>_official.pt
# (about 7 min each on one thread): their module, meta-loss (raw f over x_0..x_7, secant weight 10) and
# meta-optimizer (AdamW 1e-4, the meta-gradient clipped at 0.01), K = 8, L = 4, 400 meta-iterations, on each
# preset's problems; alpha1 per family, the best gradient-descent step of the grid 0.4 ... 1e-5 on the validation
# problems (their 0.4 diverges on Rosenbrock: docs/log.md §2); the best validation checkpoint
OFFICIAL_PROTOCOL := --set lsr1.formulation=official --set meta.unroll_steps=8 --set meta.iterations=400 --set meta.grad_clip=0.01 \
	--set meta.scored=before --set meta.divergence_guard=null --set meta.val_every=50 --set meta.val_steps=20
official-profiles: $(STAMP)
	$(PY) -m pipeline.train --local --config configs/profiles_quadratic.yaml $(OFFICIAL_PROTOCOL) --set task.meta_objective=value \
	  --name quadratic100_official
	$(PY) -m pipeline.train --local --config configs/profiles_rosenbrock.yaml $(OFFICIAL_PROTOCOL) --set lsr1.gamma1=0.0003 --name rosenbrock_official
	$(PY) -m pipeline.train --local --config configs/profiles_rastrigin.yaml $(OFFICIAL_PROTOCOL) --set lsr1.gamma1=0.001 --name rastrigin_official
	for family in quadratic100 rosenbrock rastrigin; do \
	  $(PY) -m lsr1.pretrained export runs/$${family}_official/best.pt $${family}_official --command "make official-profiles" \
	    --trained-with "the authors' formulation and protocol (Makefile OFFICIAL_PROTOCOL) on configs/profiles_*.yaml's problems, 400 meta-iterations on one CPU thread, the best validation checkpoint"; \
	done

bench: $(STAMP)
	$(PY) benchmarks/meta_step.py

# What docs/results.md's MLflow blocks read, through the product's own commands (after `make demo`; about
# 50 min on 2 cores): the quadratic test curves of the shipped models (ours, ours w/o projection, the
# authors'), HMR Table 1 (L-SR1 w/o secant term and the authors' L-SR1 beside the demo's models), data
# efficiency (a larger synthetic AMASS), lambda_sec x gamma1, the ablations
QUADRATIC_SWEEP := --config configs/quadratic.yaml --num-samples 1 --grace 1000 --cpus-per-worker 0.9 \
	--set meta.iterations=300 --set meta.val_every=100
# the authors' HMR protocol (configs/hmr_official.yaml) at the demo's budget: its data, batch 64, K = 4, 500
# meta-iterations, an initializer 128 wide
OFFICIAL_DEMO := --config configs/hmr_official.yaml $(SYNTHETIC_HMR) --set task.batch_size=64 --set meta.unroll_steps=4 \
	--set meta.iterations=500 --set meta.val_every=100 --set hmr.init_hidden_dim=128
experiments: $(STAMP)
	$(PY) -m pipeline.evaluate --checkpoint lsr1/weights/quadratic.pt --checkpoint lsr1/weights/quadratic_noproj.pt \
	  --checkpoint lsr1/weights/quadratic_official.pt --checkpoint lsr1/weights/mix.pt --checkpoint lsr1/weights/mix_lbfgs.pt \
	  --checkpoint lsr1/weights/mix_lbfgs_long.pt \
	  --buffer-sizes 2 4 8 --steps 20 \
	  --out runs/quadratic-test --log-experiment quadratic
	$(PY) -m pipeline.train --config configs/hmr_demo.yaml --set lsr1.lambda_sec=0 --name demo-lsr1-nosecant --workers 2
	$(PY) -m pipeline.train $(OFFICIAL_DEMO) --name demo-lsr1-official --workers 2
	$(PY) -m pipeline.evaluate --checkpoint runs/demo-lsr1/best.pt --checkpoint runs/demo-lsr1-nosecant/best.pt \
	  --checkpoint runs/demo-lsr1-official/best.pt --checkpoint runs/demo-lgd/best.pt --steps 20 --out runs/hmr-table --log-experiment hmr_demo
	$(PY) -m pipeline.prepare --config configs/hmr_data_efficiency.yaml --synthetic --synthetic-sequences 100
	$(PY) -m pipeline.sweep --space tune_spaces/data_efficiency.yaml --config configs/hmr_data_efficiency.yaml \
	  --num-samples 1 --grace 1000 --top-k 4 --workers 1 --cpus-per-worker 0.25 --metric val_pa_mpjpe --name data-efficiency
	$(PY) -m pipeline.sweep --space tune_spaces/sensitivity.yaml --name sensitivity $(QUADRATIC_SWEEP)
	$(PY) -m pipeline.sweep --space tune_spaces/ablation.yaml --name ablation $(QUADRATIC_SWEEP)
	$(PY) -m pipeline.sweep --space tune_spaces/ablation_step.yaml --name ablation-step $(QUADRATIC_SWEEP)

# docs/results.md's measured blocks, from the product's own commands (pipeline/report.py); after
# `make demo` and `make experiments`
BENCHMARKS ?= step_cost meta_step body_forward hmr_step train_scaling
report: $(STAMP)
	$(PY) -m lsr1.profiles --out docs/profiles
	$(PY) -m lsr1.iterations --out docs/bfgs_steps
	$(PY) -m pipeline.report --run-benchmarks $(BENCHMARKS)

# The MLflow UI on the default store (mlflow.db in this folder): http://127.0.0.1:5000
TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
UI_PORT ?= 5000
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port $(UI_PORT)

# A Ray head for `ray job submit`, here and on cluster.yaml's head (jobs run `python` from this PATH, hence the
# venv first). Token auth is on (RAY_AUTH_MODE=token; the token is ~/.ray/auth_token, made if missing, kept if
# there), and the dashboard, which is the job API, listens on 127.0.0.1 only: reach it on this machine, or from
# yours through an SSH tunnel (`ray dashboard cluster.yaml`). RAY_HEAD_ARGS adds `ray start` flags.
RAY_HEAD_ARGS ?=
cluster-up: $(STAMP)
	$(BIN)/ray get-auth-token --generate >/dev/null
	PATH=$(BIN):$$PATH RAY_AUTH_MODE=token $(BIN)/ray start --head --dashboard-host=127.0.0.1 --dashboard-port=$(RAY_DASHBOARD_PORT) \
	  --include-dashboard=true --disable-usage-stats $(RAY_HEAD_ARGS)

# Another node joins that head: make cluster-join HEAD=<head-ip>:6379. It needs the head's token (cluster.yaml
# mounts the same ~/.ray/auth_token on every node); without one it stops here.
RAY_NODE_ARGS ?=
cluster-join: $(STAMP)
	@RAY_AUTH_MODE=token $(BIN)/ray get-auth-token >/dev/null || \
	  { echo "error: no Ray token on this node: copy the head's ~/.ray/auth_token here" >&2; exit 2; }
	PATH=$(BIN):$$PATH RAY_AUTH_MODE=token $(BIN)/ray start --address=$(HEAD) --disable-usage-stats $(RAY_NODE_ARGS)

cluster-down:
	RAY_AUTH_MODE=token $(BIN)/ray stop

# A cluster's keys, made once where you run `ray up` (cluster.yaml mounts both on every node; docs/cluster.md):
# Ray's token and the MLflow server's admin password (user admin). Existing ones are kept.
MLFLOW_PASSWORD_FILE ?= $(HOME)/.lsr1/mlflow-password
cluster-secrets: $(STAMP)
	$(BIN)/ray get-auth-token --generate >/dev/null
	@test -s $(MLFLOW_PASSWORD_FILE) || ( mkdir -p $(dir $(MLFLOW_PASSWORD_FILE)) && umask 077 && \
	  $(PY) -c "import secrets; print(secrets.token_urlsafe(24))" > $(MLFLOW_PASSWORD_FILE) )
	@echo "Ray token: ~/.ray/auth_token; MLflow: user admin, password in $(MLFLOW_PASSWORD_FILE)"

# A cluster's tracking server (cluster.yaml starts it on the head): MLflow's basic-auth app, so that every request
# needs user admin and the password in MLFLOW_PASSWORD_FILE. Its users live in MLFLOW_STATE/mlflow-users.db;
# MLFLOW_SERVER_ARGS adds `mlflow server` flags (e.g. --workers 1 on a small machine).
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_BACKEND ?= sqlite:///$(CURDIR)/mlflow.db
MLFLOW_ARTIFACTS ?= $(CURDIR)/mlartifacts
MLFLOW_STATE ?= $(HOME)/.lsr1
MLFLOW_SERVER_ARGS ?=
mlflow-server: $(STAMP)
	@test -s $(MLFLOW_PASSWORD_FILE) || \
	  { echo "error: no MLflow admin password in $(MLFLOW_PASSWORD_FILE): make cluster-secrets makes one" >&2; exit 2; }
	mkdir -p $(MLFLOW_STATE)
	printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///%s/mlflow-users.db\nadmin_username = admin\n' \
	  "$(MLFLOW_STATE)" > $(MLFLOW_STATE)/mlflow-auth.ini
	MLFLOW_AUTH_CONFIG_PATH=$(MLFLOW_STATE)/mlflow-auth.ini MLFLOW_AUTH_ADMIN_PASSWORD="$$(cat $(MLFLOW_PASSWORD_FILE))" \
	  MLFLOW_FLASK_SERVER_SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_hex(32))')" \
	  exec $(BIN)/mlflow server --app-name basic-auth --backend-store-uri $(MLFLOW_BACKEND) \
	  --artifacts-destination $(MLFLOW_ARTIFACTS) --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) $(MLFLOW_SERVER_ARGS)

# Submit pipeline.train to the head: make submit CONFIG=configs/quadratic.yaml ARGS="--workers 2". The job runs in an
# uploaded copy of this folder without the git-ignored data, MLflow store and runs: the env vars point back here
submit: $(STAMP)
	RAY_AUTH_MODE=token $(BIN)/ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) --working-dir . \
	  --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": "sqlite:///$(CURDIR)/mlflow.db", "LSR1_RUNS_DIR": "$(CURDIR)/runs", "LSR1_DATA_DIR": "$(CURDIR)"}}' \
	  -- python -m pipeline.train --config $(CONFIG) $(ARGS)

clean:
	rm -rf $(VENV) runs *.egg-info
