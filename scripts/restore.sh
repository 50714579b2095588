#!/usr/bin/env bash
# Restore a backup made by scripts/backup.sh: the hub database (and cookie secret) and
# every user volume in it. The hub must be stopped (`make restore` stops and starts it).
#
#   STACK_NAME=labhub LABHUB_VERSION=0.1.0 scripts/restore.sh backups/<timestamp>
#
# ONLY_USERS="alice bob" restores only those users' volumes (the database always).
# A restored volume gets exactly the backup's files (what is in it now is replaced).
# A volume still used by a running container is refused: stop that server first.
# The current database is kept beside it as jupyterhub.sqlite.before-restore-<time>.
set -euo pipefail

folder="$(cd "${1:?usage: restore.sh BACKUP_FOLDER}" && pwd)"
stack="${STACK_NAME:?set STACK_NAME (make restore reads it from .env)}"
helper_image="labhub/hub:${LABHUB_VERSION:?set LABHUB_VERSION}"
hub_volume="${stack}-hub-data"

(cd "${folder}" && sha256sum --quiet -c SHA256SUMS) || {
  echo "restore: ${folder} fails its checksums, nothing restored" >&2
  exit 1
}
running_hub="$(docker ps -q --filter "volume=${hub_volume}")"
if [[ -n "${running_hub}" ]]; then
  echo "restore: the hub of ${stack} is running; stop it first (make restore does)" >&2
  exit 1
fi
# The volumes to restore: every archive, or those of ONLY_USERS (names in users.tsv).
volumes=()
if [[ -z "${ONLY_USERS:-}" ]]; then
  for archive in "${folder}"/volumes/*.tar.gz; do
    [[ -e "${archive}" ]] && volumes+=("$(basename "${archive}" .tar.gz)")
  done
else
  for user in ${ONLY_USERS}; do
    volume="$(awk -F'\t' -v u="${user}" '$1 == u {print $2}' "${folder}/users.tsv")"
    if [[ -z "${volume}" || ! -f "${folder}/volumes/${volume}.tar.gz" ]]; then
      echo "restore: no files of ${user} in ${folder}" >&2
      exit 1
    fi
    volumes+=("${volume}")
  done
fi
for volume in "${volumes[@]}"; do
  if [[ -n "$(docker ps -q --filter "volume=${volume}")" ]]; then
    echo "restore: ${volume} is in use by a running server; stop it first" >&2
    exit 1
  fi
done

helper() {
  docker run --rm --network none --user 0 --entrypoint "" \
    -v "${folder}:/backup:ro" "$@"
}

echo "restore: hub database of ${stack} <- ${folder}"
docker volume create "${hub_volume}" >/dev/null
# shellcheck disable=SC2016  # expanded by the helper's shell, not this one
helper -v "${hub_volume}:/srv/jupyterhub" "${helper_image}" sh -c '
  set -e
  cd /srv/jupyterhub
  if [ -f jupyterhub.sqlite ]; then
    mv jupyterhub.sqlite "jupyterhub.sqlite.before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
  fi
  # A leftover journal would be rolled back into the restored database.
  rm -f jupyterhub.sqlite-journal jupyterhub.sqlite-wal jupyterhub.sqlite-shm
  cp /backup/jupyterhub.sqlite jupyterhub.sqlite
  if [ -f /backup/jupyterhub_cookie_secret ]; then
    cp /backup/jupyterhub_cookie_secret jupyterhub_cookie_secret
  fi
  chown 1000 jupyterhub.sqlite jupyterhub_cookie_secret 2>/dev/null || true
  chmod 0600 jupyterhub.sqlite jupyterhub_cookie_secret 2>/dev/null || true
'

count=0
for volume in "${volumes[@]}"; do
  echo "restore: ${volume}"
  docker volume create "${volume}" >/dev/null
  # shellcheck disable=SC2016  # expanded by the helper's shell, not this one
  helper -v "${volume}:/data" "${helper_image}" sh -c '
    set -e
    find /data -mindepth 1 -delete
    tar -C /data --numeric-owner -xzpf "/backup/volumes/$1.tar.gz"
  ' restore "${volume}"
  count=$((count + 1))
done
echo "restore: database and ${count} volumes restored from ${folder}"
