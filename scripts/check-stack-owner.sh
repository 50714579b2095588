#!/usr/bin/env bash
# Refuse to let `make up` take over a stack it did not create.
#
#   STACK_NAME=labhub ENV_FILE=.env scripts/check-stack-owner.sh
#
# Compose names everything after STACK_NAME, so a second checkout (or a second .env) with
# the same STACK_NAME would recreate the first install's containers with its own secrets
# and settings. A stack belongs to the checkout whose compose/ folder created it (Compose's
# own working_dir label) and to the .env whose CONFIGPROXY_AUTH_TOKEN its proxy runs with.
set -euo pipefail

stack="${STACK_NAME:?set STACK_NAME}"
env_file="${ENV_FILE:?set ENV_FILE}"
here="$(cd "$(dirname "$0")/../compose" && pwd)"
# The last line wins, as in docker compose --env-file.
token="$(grep -E '^CONFIGPROXY_AUTH_TOKEN=' "$env_file" | tail -n1 | cut -d= -f2-)"

mapfile -t containers < <(docker ps -aq --filter "label=com.docker.compose.project=${stack}")
for id in "${containers[@]}"; do
  [[ -z "$id" ]] && continue
  dir="$(docker inspect -f '{{index .Config.Labels "com.docker.compose.project.working_dir"}}' "$id")"
  if [[ "$dir" != "$here" ]]; then
    echo "make up: a stack named ${stack} already runs from another checkout (${dir%/compose})." >&2
    echo "  Run make there, or give this one another STACK_NAME (and DOCKER_NETWORK) in ${env_file}." >&2
    exit 2
  fi
  running_token="$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$id" |
    grep -E '^CONFIGPROXY_AUTH_TOKEN=' | cut -d= -f2- || true)"
  if [[ -n "$running_token" && "$running_token" != "$token" ]]; then
    echo "make up: the running stack ${stack} was started with other secrets than ${env_file}." >&2
    echo "  Use the .env it was started with, or make down first to restart it with these." >&2
    exit 2
  fi
done
