#!/usr/bin/env bash
# `make doctor`: checks for a safe (GPU) host and, once `make env` has run, for the stack
# (its settings, its services' health, the certificate's expiry). One PASS/WARN/FAIL line
# per check; exits 1 if any check FAILs. A host without NVIDIA GPUs is fine: it reports
# "no GPU: CPU-only" and skips the GPU checks. See docs/security.md (GPU host hygiene).
#
# Settings (environment): DOCKER_SOCKET (/var/run/docker.sock), DOCTOR_MIN_FREE_GB (30),
# DOCTOR_WARN_FREE_GB (100), ENV_FILE (.env; the Makefile passes it).
set -uo pipefail

MIN_TOOLKIT=1.19.1  # NVIDIA Container Toolkit: earlier versions have container escapes
MIN_DOCKER=20.10
socket_path="${DOCKER_SOCKET:-/var/run/docker.sock}"
min_free_gb="${DOCTOR_MIN_FREE_GB:-30}"
warn_free_gb="${DOCTOR_WARN_FREE_GB:-100}"

failures=0
pass() { printf 'PASS  %s\n' "$*"; }
warn() { printf 'WARN  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
# version_ge A B: is version A >= version B?
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

# --- Docker engine ----------------------------------------------------------------
engine_version="$(docker version --format '{{.Server.Version}}' 2>/dev/null)"
if [[ -z "$engine_version" ]]; then
  fail "Docker engine: not answering (is dockerd running, may this user use it?)"
elif version_ge "$engine_version" "$MIN_DOCKER"; then
  pass "Docker engine $engine_version (>= $MIN_DOCKER)"
else
  fail "Docker engine $engine_version is older than $MIN_DOCKER: upgrade Docker"
fi

if [[ -n "$engine_version" ]]; then
  default_runtime="$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null)"
  if [[ "$default_runtime" == "nvidia" ]]; then
    fail "Docker's default runtime is nvidia: every container may see every GPU;" \
      "remove \"default-runtime\" from /etc/docker/daemon.json (GPUs go through device requests)"
  else
    pass "Docker's default runtime is ${default_runtime:-unknown}, not nvidia"
  fi
fi

# --- Docker socket ------------------------------------------------------------------
if [[ -e "$socket_path" ]]; then
  mode="$(stat -L -c '%a' "$socket_path")"
  if (( 8#$mode & 8#002 )); then
    fail "Docker socket $socket_path is world-writable (mode $mode): anyone on the host is root;" \
      "chmod 660 it (owner root, group docker)"
  else
    pass "Docker socket $socket_path is not world-writable (mode $mode)"
  fi
else
  warn "Docker socket $socket_path not found (DOCKER_HOST=${DOCKER_HOST:-unset})"
fi

# --- Disk space for images and users' volumes ------------------------------------------
docker_root="$(docker info --format '{{.DockerRootDir}}' 2>/dev/null)"
[[ -d "$docker_root" ]] || docker_root=/var/lib/docker
[[ -d "$docker_root" ]] || docker_root=/
free_kb="$(df -Pk "$docker_root" 2>/dev/null | awk 'NR==2 {print $4}')"
if [[ ! "$free_kb" =~ ^[0-9]+$ ]]; then
  warn "disk space: cannot read free space of $docker_root"
else
  free_gb=$((free_kb / 1024 / 1024))
  if ((free_gb < min_free_gb)); then
    fail "disk space: ${free_gb} GB free under $docker_root (< $min_free_gb GB): the workspace" \
      "image alone takes 3-8 GB and users' files have no quota"
  elif ((free_gb < warn_free_gb)); then
    warn "disk space: ${free_gb} GB free under $docker_root (< $warn_free_gb GB recommended)"
  else
    pass "disk space: ${free_gb} GB free under $docker_root"
  fi
fi

# --- NVIDIA driver and Container Toolkit ---------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  warn "no GPU: CPU-only (nvidia-smi not found); GPU checks skipped"
else
  gpus="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
  if [[ -z "$gpus" ]]; then
    fail "NVIDIA driver: nvidia-smi found but it lists no GPU (driver not loaded?)"
  else
    count="$(printf '%s\n' "$gpus" | wc -l)"
    driver="$(printf '%s\n' "$gpus" | head -n1 | awk -F', *' '{print $NF}')"
    pass "NVIDIA driver $driver, $count GPU(s): $(printf '%s\n' "$gpus" | cut -d, -f1 | sort | uniq -c | xargs)"
  fi

  if ! command -v nvidia-ctk >/dev/null 2>&1; then
    fail "NVIDIA Container Toolkit not found (nvidia-ctk): install >= $MIN_TOOLKIT"
  else
    toolkit="$(nvidia-ctk --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)"
    if [[ -z "$toolkit" ]]; then
      fail "NVIDIA Container Toolkit: cannot read the version from nvidia-ctk --version"
    elif version_ge "$toolkit" "$MIN_TOOLKIT"; then
      pass "NVIDIA Container Toolkit $toolkit (>= $MIN_TOOLKIT)"
    else
      fail "NVIDIA Container Toolkit $toolkit is older than $MIN_TOOLKIT" \
        "(known container escapes): upgrade nvidia-container-toolkit"
    fi
  fi
fi

# --- The stack: settings, services, certificate ----------------------------------------
env_file="${ENV_FILE:-.env}"
# The last line for a variable wins, as in docker compose --env-file (and the Makefile).
env_value() { grep -E "^$1=" "$env_file" | tail -n1 | cut -d= -f2-; }
if [[ ! -f "$env_file" ]]; then
  warn "stack: no $env_file yet (make up creates it): stack checks skipped"
elif [[ -n "$engine_version" ]]; then
  stack="$(env_value STACK_NAME)"; stack="${stack:-labhub}"
  hub_image="labhub/hub:$(env_value LABHUB_VERSION)"
  if ! docker image inspect "$hub_image" >/dev/null 2>&1; then
    warn "settings: image $hub_image not built yet (make build): not checked"
  elif problems="$(docker run --rm --network none --env-file "$env_file" "$hub_image" \
                   labhub check-settings 2>&1)"; then
    pass "settings in $env_file: ${problems}"
  else
    fail "settings in $env_file: $(printf '%s' "$problems" | tr '\n' ' ')"
  fi
  mapfile -t services < <(docker ps -a --filter "label=com.docker.compose.project=${stack}" \
    --format '{{.Label "com.docker.compose.service"}} {{.State}} {{.Status}}')
  if ((${#services[@]} == 0)) || [[ -z "${services[0]}" ]]; then
    warn "services of ${stack}: none running (make up starts them)"
  fi
  for line in "${services[@]}"; do
    [[ -z "$line" ]] && continue
    read -r service state status <<<"$line"
    if [[ "$state" != running || "$status" == *unhealthy* || "$status" == *Restarting* ]]; then
      fail "service $service of ${stack}: $state ($status): make logs SERVICE=$service"
    else
      pass "service $service of ${stack}: $status"
    fi
  done
  certs_dir="$(env_value CERTS_DIR)"; domain="$(env_value DOMAIN)"
  cert="${certs_dir:-certs}/${domain:-localhost}.crt"
  if [[ ! -f "$cert" ]]; then
    warn "certificate $cert not found (make certs)"
  elif ! openssl x509 -in "$cert" -noout -checkend 0 >/dev/null 2>&1; then
    fail "certificate $cert has expired: make certs (a local one) or renew yours"
  elif ! openssl x509 -in "$cert" -noout -checkend $((30 * 86400)) >/dev/null 2>&1; then
    warn "certificate $cert expires within 30 days ($(openssl x509 -in "$cert" -noout -enddate | cut -d= -f2))"
  else
    pass "certificate $cert valid until $(openssl x509 -in "$cert" -noout -enddate | cut -d= -f2)"
  fi
fi

if ((failures)); then
  echo "doctor: $failures check(s) FAILED"
  exit 1
fi
echo "doctor: no failures"
