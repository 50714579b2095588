# labhub: `make up` brings the platform up, `make test` runs every test.
# Settings live in .env (documented in .env.example); `make env` creates it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Another env file (the tests use one) can be given: make up ENV_FILE=/path/.env
ENV_FILE ?= .env
# FRONT=nginx-proxy: nginxproxy/nginx-proxy (+ Let's Encrypt) in front instead of our nginx.
FRONT ?= builtin
# ENGINE=swarm in .env: the same project on a Swarm manager, users' servers as Swarm
# services (compose/swarm.yml, docs/scale-out.md).
SWARM = $(filter swarm,$(call env_value,ENGINE))
# One host with GPUs (GPU_INVENTORY not none): the hub sees them for nvidia-smi only.
HUB_SEES_GPUS = $(if $(SWARM),,$(filter-out none,$(call env_value,GPU_INVENTORY)))
COMPOSE_FILES = -f compose/docker-compose.yml $(if $(filter nginx-proxy,$(FRONT)),-f compose/nginx-proxy.yml) \
  $(if $(SWARM),-f compose/swarm.yml) $(if $(HUB_SEES_GPUS),-f compose/gpu-hub.yml)
# BUILD=no: use the images already on the engine (built on another machine and loaded, or
# pulled); `make up` builds nothing.
BUILD ?= yes
# MONITORING=true in .env adds Prometheus (compose profile "monitoring"); `make down`
# stops it whatever the setting is now.
MONITORING_PROFILE = $(if $(filter true,$(shell printf '%s' '$(call env_value,MONITORING)' | tr '[:upper:]' '[:lower:]')),--profile monitoring)
# The engine socket the Docker proxies hold: the one DOCKER_HOST names, if it names one
# (the manager of a test cluster on this machine), else the usual one.
ENGINE_SOCKET = $(or $(patsubst unix://%,%,$(filter unix://%,$(DOCKER_HOST))),/var/run/docker.sock)
# ENGINE=swarm with REGISTRY: the users' images by the digests `make push` recorded
# (PUSHED_IMAGES, below), which compose gives the hub and the Docker proxy.
PINNED = $(and $(SWARM),$(call env_value,REGISTRY))
COMPOSE = ENGINE_SOCKET=$(ENGINE_SOCKET) LABHUB_ENV_FILE=$(abspath $(ENV_FILE)) docker compose $(COMPOSE_FILES) --env-file $(ENV_FILE) \
  $(if $(PINNED),$(addprefix --env-file ,$(wildcard $(PUSHED_IMAGES)))) $(MONITORING_PROFILE)
# The hub image's account (images/hub/Dockerfile), which commands in the hub's container run
# as: with ENGINE=swarm that container starts as root (compose/swarm.yml, labhub.frontguard),
# and root there has no right to read the hub's files.
HUB_ACCOUNT = jupyterhub
HUB_EXEC = $(COMPOSE) exec -T --user $(HUB_ACCOUNT) hub
VENV := .venv
PY := $(VENV)/bin/python
# Read a value from .env (after `make env`), falling back to .env.example. The last line
# for a variable wins, as in docker compose --env-file and scripts/init-env.sh.
env_value = $(shell { grep -E '^$(1)=' $(ENV_FILE) 2>/dev/null || grep -E '^$(1)=' .env.example; } | tail -n1 | cut -d= -f2-)
WORKSPACE_IMAGE = labhub/workspace:$(call env_value,LABHUB_VERSION)
# The PyTorch workspace images WORKSPACE_IMAGES lists (labhub/workspace-torch:<tag>): built
# only when offered, as its CUDA wheels are some GBs that a lab without it need not fetch.
comma := ,
USERS_IMAGES = $(WORKSPACE_IMAGE) $(subst $(comma), ,$(call env_value,WORKSPACE_IMAGES))
TORCH_IMAGES = $(filter labhub/workspace-torch:%,$(USERS_IMAGES))
# ENGINE=swarm: what every node runs besides the users' images, the hub image (each node's
# Docker proxy and the copy helpers of homes); with REGISTRY the nodes pull it as they do those.
HUB_IMAGE = labhub/hub:$(call env_value,LABHUB_VERSION)
NODES_IMAGES = $(USERS_IMAGES) $(HUB_IMAGE)
# A shell word for an image a node runs: with REGISTRY, the digest reference make push
# recorded (checked before by the pushed-images step), else the image's tag.
node_image = $(if $(PINNED),"$$(scripts/push-images.sh --ref $(PUSHED_IMAGES) $(1))",$(1))

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'

# First on a bare machine: reads the settings the way env_value does, changes nothing of
# labhub; as root on Debian/Ubuntu it installs a missing Docker, Compose or debootstrap.
.PHONY: preflight
preflight: ## Check Docker, Compose, free ports, disk and debootstrap (install them as root)
	@HTTP_PORT=$(call env_value,HTTP_PORT) HTTPS_PORT=$(call env_value,HTTPS_PORT) \
	  BIND_ADDRESS=$(call env_value,BIND_ADDRESS) STACK_NAME=$(call env_value,STACK_NAME) \
	  BASE_IMAGE=$(call env_value,BASE_IMAGE) WORKSPACE_IMAGE=$(WORKSPACE_IMAGE) \
	  TENSORFLOW_PACKAGE='$(call env_value,TENSORFLOW_PACKAGE)' TORCH_IMAGES='$(TORCH_IMAGES)' \
	  ENV_FILE=$(ENV_FILE) \
	  scripts/preflight.sh

.PHONY: env
env: ## Create or complete .env (secrets generated, mode 0600)
	@scripts/init-env.sh $(ENV_FILE)

.PHONY: stack-owner
stack-owner: env
	@STACK_NAME=$(call env_value,STACK_NAME) ENV_FILE=$(ENV_FILE) scripts/check-stack-owner.sh

.PHONY: certs
certs: env ## Create the local CA and the server certificate (or use yours)
	@DOMAIN=$(call env_value,DOMAIN) LAN_ADDRESSES=$(call env_value,LAN_ADDRESSES) CERTS_DIR=$(call env_value,CERTS_DIR) scripts/make-certs.sh

.PHONY: base-image
base-image: env ## Pull the base image, or build it offline with debootstrap
	@scripts/build-base-image.sh $(call env_value,BASE_IMAGE)

.PHONY: build
build: env base-image ## Build the hub, proxy, workspace and egress images
	@TRUST_HOST_CAS=$(call env_value,TRUST_HOST_CAS) scripts/stage-extra-ca.sh
	$(COMPOSE) build
	docker build -f images/workspace/Dockerfile \
	  --build-arg BASE_IMAGE=$(call env_value,BASE_IMAGE) \
	  --build-arg FRAMEWORK_PACKAGE='$(call env_value,TENSORFLOW_PACKAGE)' \
	  -t $(WORKSPACE_IMAGE) .
	@# Swarm mode's egress proxy (compose/swarm.yml), small: built whatever ENGINE says, so
	@# that the image is at hand to copy to a manager.
	docker build -f images/egress/Dockerfile \
	  --build-arg BASE_IMAGE=$(call env_value,BASE_IMAGE) \
	  -t labhub/egress:$(call env_value,LABHUB_VERSION) .
	@# The PyTorch workspace, the same Dockerfile, only when WORKSPACE_IMAGES offers it.
	$(foreach image,$(TORCH_IMAGES),docker build -f images/workspace/Dockerfile \
	  --build-arg BASE_IMAGE=$(call env_value,BASE_IMAGE) \
	  --build-arg FRAMEWORK_PACKAGE='$(call env_value,TORCH_PACKAGE)' \
	  --build-arg KERAS_BACKEND=torch --build-arg KERNEL_NAME=pytorch \
	  --build-arg KERNEL_DISPLAY_NAME=PyTorch -t $(image) . &&) true

# ENGINE=swarm: the nodes pull the users' images (the workspace image, WORKSPACE_IMAGES)
# from REGISTRY by the digests recorded here (docs/scale-out.md, "Images"). Without
# REGISTRY nothing changes: images stay local.
PUSHED_IMAGES ?= pushed-images.env

.PHONY: push
push: ## Push the images the nodes run to REGISTRY and record their digests (after make build)
	@REGISTRY=$(call env_value,REGISTRY) scripts/push-images.sh $(PUSHED_IMAGES) $(NODES_IMAGES)

# ENGINE=swarm with REGISTRY: make up stops unless every users' image here is the one
# make push recorded (pushed, and not built again since).
.PHONY: pushed-images
pushed-images: env
	@$(if $(PINNED),GOAL='$(firstword $(MAKECMDGOALS))' scripts/push-images.sh --check $(PUSHED_IMAGES) $(NODES_IMAGES))

.PHONY: up
up: preflight env swarm-manager stack-owner certs $(if $(filter no,$(BUILD)),,build) pushed-images ## Set everything up and start the platform
	@# Settings are checked before anything starts: a wrong value is listed with its fix.
	@# GPU_CONFIG_DIR is mounted as for the hub: DATASETS may name a file in it.
	@docker run --rm --network none --env-file $(ENV_FILE) \
	  $(if $(PINNED),--env-file $(PUSHED_IMAGES) -e WORKSPACE_IMAGE=$(WORKSPACE_IMAGE)) \
	  $(if $(call env_value,GPU_CONFIG_DIR),-v $(call env_value,GPU_CONFIG_DIR):/srv/labhub:ro) \
	  labhub/hub:$(call env_value,LABHUB_VERSION) \
	  labhub check-settings || \
	  { echo "make up: fix the settings above in $(ENV_FILE), then run make up again" >&2; exit 2; }
	@$(if $(SWARM),scripts/swarm-manager.sh network '$(call env_value,DOCKER_NETWORK)')
	@# The hub's and CHP's own firewalls (labhub.frontguard): the users' pools, the lab's network.
	@$(if $(SWARM),mkdir -p $(dir $(FRONTEND_NETWORKS)) && scripts/swarm-manager.sh frontend-networks \
	  '$(call env_value,DOCKER_NETWORK)' > $(FRONTEND_NETWORKS).partial \
	  && mv $(FRONTEND_NETWORKS).partial $(FRONTEND_NETWORKS))
	@$(if $(SWARM),$(MAKE) --no-print-directory egress-conf)
	@# QUOTA_ROOT: the diskquota service on every node, which the node proxies relay to.
	@$(if $(SWARM),ENV_FILE=$(ENV_FILE) scripts/swarm-manager.sh $(if $(call env_value,QUOTA_ROOT),diskquota \
	  '$(call env_value,DOCKER_NETWORK)' $(call node_image,$(HUB_IMAGE)) \
	  '$(call env_value,QUOTA_ROOT)' '$(call env_value,DISK_QUOTA_MAX)',remove-diskquota \
	  '$(call env_value,DOCKER_NETWORK)'))
	@# The node proxies run the hub image and allow copy helpers of it only (Settings.copy_helper_image).
	@$(if $(SWARM),ENV_FILE=$(ENV_FILE) scripts/swarm-manager.sh node-proxies $(NODE_PROXIES) \
	  $(call node_image,$(HUB_IMAGE)) '$(call env_value,NODE_DOCKER_SOCKET)' \
	  '$(call env_value,DOCKER_NETWORK)' $(call node_image,$(HUB_IMAGE)) \
	  '$(call env_value,QUOTA_ROOT)')
	@$(if $(and $(SWARM),$(MONITORING_PROFILE)),ENV_FILE=$(ENV_FILE) scripts/swarm-manager.sh metrics-proxies \
	  $(METRICS_PROXIES) $(call node_image,$(HUB_IMAGE)) '$(call env_value,NODE_DOCKER_SOCKET)' \
	  '$(call env_value,DOCKER_NETWORK)')
	@# DATASETS: each host folder on every node; a node without one is a warning naming both.
	@$(if $(and $(SWARM),$(call env_value,DATASETS)),docker run --rm --network none \
	  --env-file $(ENV_FILE) \
	  $(if $(call env_value,GPU_CONFIG_DIR),-v $(call env_value,GPU_CONFIG_DIR):/srv/labhub:ro) \
	  $(HUB_IMAGE) labhub dataset-folders \
	  | ENV_FILE=$(ENV_FILE) scripts/swarm-manager.sh datasets '$(call env_value,DOCKER_NETWORK)' \
	  $(call node_image,$(HUB_IMAGE)))
	@$(STARTUP_FILES_SHAS) $(COMPOSE) up -d --wait || { $(COMPOSE) logs --no-color --tail=40 hub >&2; \
	  echo "make up: a service did not become healthy; the hub's last lines are above" \
	       "(make logs SERVICE=hub for more)" >&2; exit 1; }
	@# The egress proxy's rules name the manager's bridge networks, compose's own among them,
	@# which the first make up has only just made: written again, the proxy recreated if so.
	@# (Two lines: under make -n, make still runs a line that calls make.)
	@$(if $(SWARM),$(MAKE) --no-print-directory egress-conf)
	@$(if $(SWARM),$(STARTUP_FILES_SHAS) $(COMPOSE) up -d --wait egress)
	@ENV_FILE=$(ENV_FILE) scripts/print-welcome.sh

# ENGINE=swarm: the nodes' Docker proxies, a global service and its network of this name
# (compose/swarm.yml spells it too, for the hub).
NODE_PROXIES = '$(call env_value,DOCKER_NETWORK)-node-proxy'
# ENGINE=swarm, MONITORING=true: the nodes' read-only Docker proxies for the per-user
# metrics, likewise (compose/swarm.yml spells it for the exporter).
METRICS_PROXIES = '$(call env_value,DOCKER_NETWORK)-metrics-proxy'

# ENGINE=swarm: where make up writes what the frontends' firewalls need, and compose/swarm.yml
# mounts it from.
FRONTEND_NETWORKS = .build/frontguard/networks
# ENGINE=swarm: the egress proxy's rules (labhub.egress) from the settings and the Swarm,
# written where compose/swarm.yml mounts them; `make up` writes them again each time.
EGRESS_CONF = .build/egress/squid.conf
# Files that containers read only when they start, as hashes compose gives them as labels
# (compose/*.yml): `make up` recreates a container whose files changed, and no other. nginx
# reads the server certificate (which `make certs` may have issued again); the hub and the
# Docker proxy read GPU_CONFIG_DIR (and the hub EXTRA_CA_FILE); with ENGINE=swarm the hub
# and CHP read the networks file, the egress proxy its rules.
STARTUP_FILES_SHAS = CERTIFICATE_SHA=$(call files_sha,$(or $(call env_value,CERTS_DIR),certs)/$(call \
  env_value,DOMAIN).crt) CONFIG_FILES_SHA=$(call files_sha,$(call env_value,GPU_CONFIG_DIR) \
  $(call env_value,EXTRA_CA_FILE))$(if $(SWARM), FRONTEND_NETWORKS_SHA=$(call \
  files_sha,$(FRONTEND_NETWORKS)) EGRESS_CONF_SHA=$(call files_sha,$(EGRESS_CONF)))
# The hash of the files under the paths $(1), names and contents; empty for no path.
files_sha = $(if $(strip $(1)),$$(find -L $(1) -type f -print0 2>/dev/null | sort -z \
  | xargs -0r sha256sum 2>/dev/null | sha256sum | cut -c1-64))
.PHONY: egress-conf
egress-conf: env
	@mkdir -p $(dir $(EGRESS_CONF))
	@docker run --rm --network none --env-file $(ENV_FILE) \
	  labhub/hub:$(call env_value,LABHUB_VERSION) \
	  labhub egress-conf $$(scripts/swarm-manager.sh never) > $(EGRESS_CONF).partial
	@chmod 644 $(EGRESS_CONF).partial && mv $(EGRESS_CONF).partial $(EGRESS_CONF)

# ENGINE=swarm: this engine must be a Swarm manager (checked before anything is built).
.PHONY: swarm-manager
swarm-manager: env
	@$(if $(SWARM),scripts/swarm-manager.sh check)

# Users' containers first, found by the name prefix the spawner gives them: the hub image
# says what it is (labhub.contract owns it). Without that image nothing is stopped, as
# netguard's step below needs it too.
USER_CONTAINER_PREFIX = docker run --rm --pull never --network none \
  labhub/hub:$(call env_value,LABHUB_VERSION) labhub container-prefix '$(call env_value,DOCKER_NETWORK)'

.PHONY: down
down: ## Stop the platform and users' servers (users' files and the hub database stay)
	@prefix="$$($(USER_CONTAINER_PREFIX))" || { echo "make down: nothing stopped: the hub image" \
	  "labhub/hub:$(call env_value,LABHUB_VERSION) did not answer (make build makes it)" >&2; exit 1; }; \
	docker ps -a --format '{{.Names}}' | awk -v prefix="$$prefix" 'index($$0, prefix) == 1' \
	  | xargs -r docker rm -f >/dev/null$(if $(SWARM),; \
	docker service ls --format '{{.Name}}' | awk -v prefix="$$prefix" 'index($$0, prefix) == 1' \
	  | xargs -r docker service rm >/dev/null)
	$(COMPOSE) --profile monitoring down
ifeq ($(SWARM),)
	@# Only now, with no user container left: netguard's rules go (stopping it keeps them).
	$(COMPOSE) run --rm --no-deps netguard labhub-netguard remove
else
	@# The overlay network make up made, once the users' tasks have left it.
	@scripts/swarm-manager.sh remove-network '$(call env_value,DOCKER_NETWORK)'
	@scripts/swarm-manager.sh remove-node-proxies $(NODE_PROXIES)
	@scripts/swarm-manager.sh remove-node-proxies $(METRICS_PROXIES)
	@scripts/swarm-manager.sh remove-diskquota '$(call env_value,DOCKER_NETWORK)'
endif

# The GPUs to declare in GPU_INVENTORY (docs/gpus.md): on one host, nvidia-smi in a
# throwaway container of the hub image that sees every GPU; with ENGINE=swarm, after make
# up, every node's, through its Docker proxy (labhub gpu-inventory in the hub's container).
.PHONY: gpu-inventory
gpu-inventory: ## Print the GPUs nvidia-smi finds (every node's with ENGINE=swarm) as a GPU_INVENTORY file to edit
	@$(if $(SWARM),$(HUB_EXEC) labhub gpu-inventory,docker run --rm --gpus all \
	  --entrypoint python $(HUB_IMAGE) -m labhub.gpu.inventory)

# ENGINE=swarm: labhub move-home in the hub's container, which finds every node's proxy.
.PHONY: move-home
move-home: ## Swarm mode: move a stopped user's home to another node: make move-home USER=alice NODE=<node id>
	@test "$(origin USER)" = "command line" -a -n "$(NODE)" || \
	  { echo "usage: make move-home USER=<hub user> NODE=<node id from docker node ls>" >&2; exit 2; }
	@$(if $(SWARM),,{ echo "make move-home: only with ENGINE=swarm (one host has one node)" >&2; exit 2; })
	$(HUB_EXEC) labhub move-home '$(USER)' '$(NODE)'

.PHONY: logs
logs: ## Follow the logs (of every service, or SERVICE=hub|proxy|proxy-chp|docker-proxy|netguard|diskquota)
	$(COMPOSE) logs -f --tail=100 $(SERVICE)

.PHONY: doctor
doctor: ## Check this host (GPU set-up) and the stack (settings, services, certificate)
	@ENV_FILE=$(ENV_FILE) scripts/doctor.sh

# Backups go to BACKUP_ROOT/<UTC timestamp>/ (gitignored); see docs/reliability.md.
# With ENGINE=swarm the homes are on every node: make backup reads each on its node and
# make restore writes each back there (through the hub's container and that node's proxy).
BACKUP_ROOT ?= backups
RESTORE = ENGINE=$(call env_value,ENGINE) STACK_NAME=$(call env_value,STACK_NAME) DOCKER_NETWORK=$(call env_value,DOCKER_NETWORK) \
  HUB_ACCOUNT=$(HUB_ACCOUNT) LABHUB_VERSION=$(call env_value,LABHUB_VERSION) ONLY_USERS='$(ONLY_USERS)' NODE='$(NODE)' \
  scripts/restore.sh

.PHONY: backup
backup: ## Back up the hub and GPU databases and every user volume into backups/<time>/
	@ENGINE=$(call env_value,ENGINE) STACK_NAME=$(call env_value,STACK_NAME) DOCKER_NETWORK=$(call env_value,DOCKER_NETWORK) \
	  HUB_ACCOUNT=$(HUB_ACCOUNT) LABHUB_VERSION=$(call env_value,LABHUB_VERSION) \
	  BACKUP_ROOT=$(BACKUP_ROOT) ONLY_USERS='$(ONLY_USERS)' scripts/backup.sh

.PHONY: restore
restore: ## Restore a backup: make restore BACKUP=backups/<time> [ONLY_USERS="alice bob" [NODE=<node id>]]
	@test -n "$(BACKUP)" || { echo "usage: make restore BACKUP=backups/<time> [ONLY_USERS=... [NODE=<node id>]]"; exit 2; }
	@# Whole restore: databases + files, hub stopped meanwhile; ONLY_USERS: those users'
	@# files only, hub untouched. Every check runs first; a refusal changes nothing.
	@# ENGINE=swarm: the homes are written on their nodes through the running hub's
	@# container, so scripts/restore.sh stops and starts the hub itself, after them.
	@# NODE= (Swarm, with ONLY_USERS): onto that node, which becomes their home node.
	@$(RESTORE) --check $(BACKUP)
	@if [ -z "$(ONLY_USERS)" ] && [ -z "$(SWARM)" ]; then \
	  $(COMPOSE) stop hub; $(RESTORE) $(BACKUP); status=$$?; $(COMPOSE) start hub; exit $$status; \
	else $(RESTORE) $(BACKUP); fi

$(VENV)/.installed: requirements/dev.txt hub/pyproject.toml mnist_workspace/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements/dev.txt
	touch $@

.PHONY: venv
venv: $(VENV)/.installed

.PHONY: lint
lint: venv ## ruff, mypy, hadolint, shellcheck
	$(VENV)/bin/ruff check . tests/fake-gpu/nvidia-container-runtime tests/fake-nvml/nvidia-smi
	$(VENV)/bin/ruff format --check . tests/fake-gpu/nvidia-container-runtime tests/fake-nvml/nvidia-smi
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint images/*/Dockerfile tests/oidc-provider/Dockerfile
	shellcheck scripts/*.sh images/*/*.sh .ci/run tests/fake-gpu/nvidia-container-runtime-hook \
	  tests/run-all.sh

# .env.example and docs/settings.md come from the table in hub/labhub/settings.py.
.PHONY: settings-docs
settings-docs: venv ## Regenerate .env.example and docs/settings.md from the settings table
	PYTHONPATH=hub $(PY) -m labhub.cli settings-docs

.PHONY: test
# Two pytest runs at once, the Swarm tests beside the others (tests/run-all.sh); with
# PYTEST_ARGS, one run of exactly that (make test PYTEST_ARGS="tests/test_tls.py -x").
test: lint ## Run every test: unit, integration (real Docker), end to end (nginx, browser)
	@PY=$(PY) PYTEST_ARGS='$(PYTEST_ARGS)' tests/run-all.sh

.PHONY: migrate-volumes
migrate-volumes: ## Copy users' files from the shared labhub-user-* volumes into this stack's own
	@STACK_NAME=$(call env_value,STACK_NAME) DOCKER_NETWORK=$(call env_value,DOCKER_NETWORK) \
	  LABHUB_VERSION=$(call env_value,LABHUB_VERSION) scripts/migrate-volumes.sh

# The lab on Kubernetes: docs/scale-out.md. Holds the login secrets, so it is written 0600.
Z2JH_VALUES ?= z2jh-values.yaml
.PHONY: z2jh-values
z2jh-values: env pushed-images ## Write this lab as Zero to JupyterHub values (Z2JH_VALUES=z2jh-values.yaml)
	@# A Swarm lab's registry: its images by the digests make push recorded, as make up runs them.
	@umask 077 && docker run --rm --env-file $(ENV_FILE) -e WORKSPACE_IMAGE=$(WORKSPACE_IMAGE) \
	  $(if $(PINNED),--env-file $(PUSHED_IMAGES)) \
	  $(if $(call env_value,GPU_CONFIG_DIR),-v $(call env_value,GPU_CONFIG_DIR):/srv/labhub:ro) \
	  labhub/hub:$(call env_value,LABHUB_VERSION) labhub z2jh-values > $(Z2JH_VALUES).partial || \
	  { rm -f $(Z2JH_VALUES).partial; exit 2; }
	@mv $(Z2JH_VALUES).partial $(Z2JH_VALUES)
	@echo "wrote $(Z2JH_VALUES); next: helm upgrade --install labhub jupyterhub/jupyterhub --values $(Z2JH_VALUES) (docs/scale-out.md)"
.PHONY: disk-usage
disk-usage: ## Each home's disk usage and quota, most used first (with QUOTA_ROOT set; every node's with ENGINE=swarm)
	@$(if $(SWARM),$(HUB_EXEC) labhub disk-usage,$(COMPOSE) exec -T diskquota labhub-diskquota report)

.PHONY: remove-user-volume
remove-user-volume: ## Remove a deleted user's files: make remove-user-volume NAME=alice
	@test -n "$(NAME)" || { echo "usage: make remove-user-volume NAME=<username>"; exit 2; }
	$(COMPOSE) exec --user $(HUB_ACCOUNT) hub labhub-remove-user-volume '$(NAME)'

# Course material from git (docs/course.md): prints the nbgitpuller link; with GROUP, the
# group's members also see it on the hub's pages (REMOVE=1 takes it off).
.PHONY: course-link
course-link: ## Link to course material in git: make course-link REPO=https://... [BRANCH= OPEN= GROUP= TITLE=]
	@test -n "$(REPO)" || { echo "usage: make course-link REPO=<https clone URL> [BRANCH=main]" \
	  "[OPEN=week1/intro.ipynb] [GROUP=<JupyterHub group>] [TITLE=<link text>] [REMOVE=1]"; exit 2; }
	@$(HUB_EXEC) labhub course-link --repo '$(REPO)' --branch '$(or $(BRANCH),main)' \
	  --open '$(OPEN)' --group '$(GROUP)' --title '$(TITLE)' $(if $(REMOVE),--remove)
