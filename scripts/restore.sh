#!/usr/bin/env bash
# Restore a backup made by scripts/backup.sh, in one of two modes (docs/reliability.md):
#
#   whole (ONLY_USERS empty): the hub database, the GPU database (allocations, quotas,
#     audit log) and the cookie secret, and every user volume in the backup. Every user
#     server of the stack must be stopped first (servers unknown to the restored database
#     would be orphans), and the hub must be stopped (`make restore` stops and starts it).
#   files only (ONLY_USERS="alice bob"): those users' volumes, nothing else. The hub and
#     its databases are not touched and other users' servers keep running; only the named
#     users' servers must be stopped.
#
#   STACK_NAME=labhub DOCKER_NETWORK=labhub LABHUB_VERSION=0.1.0 scripts/restore.sh [--check] DIR
#
# --check only runs the checks and lists every reason to refuse (exit 1), changing nothing:
# `make restore` runs it before it stops anything. A restored volume gets exactly the
# backup's files. The current databases are kept beside them as *.before-restore-<time>.
set -euo pipefail

check_only=false
if [[ "${1:-}" == --check ]]; then check_only=true; shift; fi
folder="$(cd "${1:?usage: restore.sh [--check] BACKUP_FOLDER}" && pwd)"
stack="${STACK_NAME:?set STACK_NAME (make restore reads it from .env)}"
network="${DOCKER_NETWORK:-${stack}}"
helper_image="labhub/hub:${LABHUB_VERSION:?set LABHUB_VERSION}"
hub_volume="${stack}-hub-data"

(cd "${folder}" && sha256sum --quiet -c SHA256SUMS) || {
  echo "restore: ${folder} fails its checksums, nothing restored" >&2
  exit 1
}

problems=()
volumes=()
if [[ -z "${ONLY_USERS:-}" ]]; then
  for archive in "${folder}"/volumes/*.tar.gz; do
    [[ -e "${archive}" ]] && volumes+=("$(basename "${archive}" .tar.gz)")
  done
  # User containers' names start with what labhub.contract says (the hub image tells).
  prefix="$(docker run --rm --network none "${helper_image}" labhub container-prefix "${network}")"
  mapfile -t running < <(docker ps --format '{{.Names}}' | awk -v p="${prefix}" 'index($0, p) == 1')
  for name in "${running[@]}"; do
    [[ -n "${name}" ]] && problems+=("server ${name} is running: a whole restore needs every user server stopped (admin panel: Stop All); or restore files only (ONLY_USERS)")
  done
else
  for user in ${ONLY_USERS}; do
    volume="$(awk -F'\t' -v u="${user}" '$1 == u {print $2}' "${folder}/users.tsv")"
    if [[ -z "${volume}" || ! -f "${folder}/volumes/${volume}.tar.gz" ]]; then
      problems+=("no files of ${user} in ${folder}")
    else
      volumes+=("${volume}")
    fi
  done
fi
for volume in "${volumes[@]}"; do
  if [[ -n "$(docker ps -q --filter "volume=${volume}")" ]]; then
    problems+=("${volume} is in use by a running server: stop that server first")
  fi
done
if ((${#problems[@]})); then
  echo "restore: refused, nothing changed:" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
if [[ "${check_only}" == true ]]; then
  exit 0
fi

helper() {
  docker run --rm --network none --user 0 --entrypoint "" \
    -v "${folder}:/backup:ro" "$@"
}

if [[ -z "${ONLY_USERS:-}" ]]; then
  if [[ -n "$(docker ps -q --filter "volume=${hub_volume}")" ]]; then
    echo "restore: the hub of ${stack} is running; stop it first (make restore does)" >&2
    exit 1
  fi
  echo "restore: hub and GPU databases of ${stack} <- ${folder}"
  docker volume create "${hub_volume}" >/dev/null
  # shellcheck disable=SC2016  # expanded by the helper's shell, not this one
  helper -v "${hub_volume}:/srv/jupyterhub" "${helper_image}" sh -c '
    set -e
    cd /srv/jupyterhub
    now="$(date -u +%Y%m%dT%H%M%SZ)"
    for db in jupyterhub.sqlite gpu.sqlite; do
      [ -f "/backup/${db}" ] || continue
      if [ -f "${db}" ]; then mv "${db}" "${db}.before-restore-${now}"; fi
      # A leftover journal would be rolled back into the restored database.
      rm -f "${db}-journal" "${db}-wal" "${db}-shm"
      cp "/backup/${db}" "${db}"
      chown 1000 "${db}" && chmod 0600 "${db}"
    done
    if [ -f /backup/jupyterhub_cookie_secret ]; then
      cp /backup/jupyterhub_cookie_secret jupyterhub_cookie_secret
      chown 1000 jupyterhub_cookie_secret && chmod 0600 jupyterhub_cookie_secret
    fi
  '
fi

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
if [[ -z "${ONLY_USERS:-}" ]]; then
  echo "restore: databases and ${count} volumes restored from ${folder}"
else
  echo "restore: files of ${count} user(s) restored from ${folder}; hub and databases untouched"
fi
