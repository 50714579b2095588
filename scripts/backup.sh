#!/usr/bin/env bash
# Back up the hub database, the GPU database and every user's volume into
# BACKUP_ROOT/<UTC timestamp>/.
#
#   STACK_NAME=labhub DOCKER_NETWORK=labhub LABHUB_VERSION=0.1.0 scripts/backup.sh
#   (or: make backup)
#
# The databases (the hub's, and the GPU allocations, quotas and audit log in gpu.sqlite
# when GPUs are on) are copied with SQLite's online backup API (`sqlite3 .backup`), which
# is consistent while the hub runs. The users are read from that copy, and each user's
# volume (labhub-user-*) is archived with tar by a throw-away helper container from
# the hub image, with no network. Running servers keep running: a file being written
# during the backup may be caught half-way, so stop servers first for a point-in-time
# copy of users' files. ONLY_USERS="alice bob" archives only those users' volumes (the
# databases are always backed up whole). The last line printed is the backup folder.
#
# ENGINE=swarm: the homes are on every node. The hub's container reads each through its
# node's Docker proxy (`labhub home-archive`, docs/scale-out.md); the archive's members are
# under jovyan/ (the engine's archive of /home/jovyan), not ./, and make restore does not
# read such a backup yet.
set -euo pipefail

stack="${STACK_NAME:?set STACK_NAME (make backup reads it from .env)}"
network="${DOCKER_NETWORK:-${stack}}"
helper_image="labhub/hub:${LABHUB_VERSION:?set LABHUB_VERSION}"
# What commands in the hub's container run as (the Makefile's HUB_ACCOUNT: on a Swarm that
# container starts as root, which may not read the hub's files).
hub_account="${HUB_ACCOUNT:?set HUB_ACCOUNT (make backup sets it)}"
root="${BACKUP_ROOT:-backups}"
hub_volume="${stack}-hub-data"

docker volume inspect "${hub_volume}" >/dev/null 2>&1 || {
  echo "backup: no volume ${hub_volume}: is STACK_NAME=${stack} right?" >&2
  exit 1
}
mkdir -p "${root}"
folder="$(cd "${root}" && pwd)/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -m 0700 "${folder}"
mkdir "${folder}/volumes"

helper() {
  docker run --rm --network none --user 0 --entrypoint "" \
    -v "${folder}:/backup" "$@"
}

echo "backup: hub and GPU databases of ${stack} -> ${folder}"
# shellcheck disable=SC2016  # expanded by the helper's shell, not this one
helper -v "${hub_volume}:/srv/jupyterhub" "${helper_image}" sh -c '
  set -e
  sqlite3 /srv/jupyterhub/jupyterhub.sqlite ".backup /backup/jupyterhub.sqlite"
  test "$(sqlite3 /backup/jupyterhub.sqlite "PRAGMA integrity_check")" = ok
  if [ -f /srv/jupyterhub/gpu.sqlite ]; then
    sqlite3 /srv/jupyterhub/gpu.sqlite ".backup /backup/gpu.sqlite"
    test "$(sqlite3 /backup/gpu.sqlite "PRAGMA integrity_check")" = ok
  fi
  if [ -f /srv/jupyterhub/jupyterhub_cookie_secret ]; then
    cp -p /srv/jupyterhub/jupyterhub_cookie_secret /backup/
  fi
  # One line per user: name <TAB> volume, with the spawner'"'"'s own naming rule.
  labhub user-volumes /backup/jupyterhub.sqlite "$0" | cut -f1,2 >/backup/users.tsv
' "${network}"

# ENGINE=swarm: one user's home from its node, through the hub's container (exit 2 of
# labhub home-archive: no home to read, said on stderr).
archive_on_its_node() {
  local user="$1" archive="${folder}/volumes/$2.tar.gz" status=0
  docker exec --user "${hub_account}" "${stack}-hub" labhub home-archive "${user}" | gzip >"${archive}" || status=$?
  case "${status}" in
    0) return 0 ;;
    2) rm -f "${archive}"; echo "backup: ${user} skipped (above)"; return 1 ;;
    *) echo "backup: ${user}'s home could not be read (above): the backup is incomplete" >&2
       exit 1 ;;
  esac
}

count=0
while IFS=$'\t' read -r user volume; do
  if [[ -n "${ONLY_USERS:-}" && " ${ONLY_USERS} " != *" ${user} "* ]]; then
    continue
  fi
  if [[ "${ENGINE:-docker}" == swarm ]]; then
    echo "backup: ${user} (${volume}, on its node)"
    if archive_on_its_node "${user}" "${volume}"; then
      count=$((count + 1))
    fi
    continue
  fi
  if ! docker volume inspect "${volume}" >/dev/null 2>&1; then
    echo "backup: ${user} has no volume yet (never started), skipped"
    continue
  fi
  echo "backup: ${user} (${volume})"
  helper -v "${volume}:/data:ro" "${helper_image}" \
    tar -C /data --numeric-owner -czf "/backup/volumes/${volume}.tar.gz" .
  count=$((count + 1))
done <"${folder}/users.tsv"

(cd "${folder}" && find . -type f -print0 | sort -z | xargs -0 sha256sum >../.sums.$$ &&
  mv ../.sums.$$ SHA256SUMS)
echo "backup: database, $(wc -l <"${folder}/users.tsv") users, ${count} volumes"
echo "backup written to ${folder}"
