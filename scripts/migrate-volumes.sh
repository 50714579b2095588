#!/usr/bin/env bash
# Give a stack's users volumes of its own: copy each user's files from the volume every
# stack used to share (labhub-user-<name>) into the stack's own (<DOCKER_NETWORK>-user-<name>).
#
#   STACK_NAME=course2 DOCKER_NETWORK=course2 LABHUB_VERSION=0.1.0 scripts/migrate-volumes.sh
#   (or: make migrate-volumes)
#
# Only needed for a stack whose DOCKER_NETWORK is not the default `labhub`: the default
# stack's names did not change. A user whose new volume exists already is left alone, so
# running it twice is safe; a user whose server runs is skipped (stop it, run again). The
# shared volume is kept: another stack may hold the same user's files there.
set -euo pipefail

stack="${STACK_NAME:?set STACK_NAME (make migrate-volumes reads it from .env)}"
network="${DOCKER_NETWORK:-${stack}}"
helper_image="labhub/hub:${LABHUB_VERSION:?set LABHUB_VERSION}"
hub_volume="${stack}-hub-data"

if [[ "${network}" == labhub ]]; then
  echo "migrate-volumes: DOCKER_NETWORK=labhub keeps its volume names: nothing to do"
  exit 0
fi
helper() { docker run --rm --network none --user 0 --entrypoint "" "$@"; }

copied=0 skipped=0
while IFS=$'\t' read -r user volume shared; do
  if docker volume inspect "${volume}" >/dev/null 2>&1; then
    continue  # migrated already, or started fresh under the new name
  fi
  if ! docker volume inspect "${shared}" >/dev/null 2>&1; then
    continue  # never started a server: nothing to copy
  fi
  if [[ -n "$(docker ps -q --filter "volume=${shared}")" ]]; then
    echo "migrate-volumes: ${user}: ${shared} is in use by a running server; stop it, run again" >&2
    skipped=$((skipped + 1))
    continue
  fi
  echo "migrate-volumes: ${user}: ${shared} -> ${volume}"
  docker volume create "${volume}" >/dev/null
  helper -v "${shared}:/from:ro" -v "${volume}:/to" "${helper_image}" cp -a /from/. /to/
  copied=$((copied + 1))
done < <(helper -v "${hub_volume}:/srv/jupyterhub:ro" "${helper_image}" \
           labhub user-volumes /srv/jupyterhub/jupyterhub.sqlite "${network}")
echo "migrate-volumes: ${copied} copied, ${skipped} skipped; shared volumes kept (labhub-user-*)"
[[ "${skipped}" == 0 ]]
