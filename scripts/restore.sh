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
#
# ENGINE=swarm: each home is written back on the user's home node (the one the hub's
# database records; in a whole restore, the backup's database) through that node's Docker
# proxy, by `labhub home-restore` in the hub's container, which reads every member back
# and compares it with the archive. A user's server is a Swarm service: any of the
# restored users' (whole: anyone's) refuses the restore. Before a home is replaced its
# current files are saved beside the backup (before-restore-<time>/, `labhub
# home-archive`) and put back if the restore of that home fails. A whole restore writes
# the homes first, with the hub running (its container is the way to the nodes), then
# stops the hub's container, restores the databases and starts it again.
#
# NODE=<node ID> (ENGINE=swarm, with ONLY_USERS): those users' homes are written on that
# node instead, which then becomes their home node (`labhub home-restore --node`): for a
# home node that is down, drained or gone. Refused, naming the fix, when that node is not
# ready and active, or a user's home volume is on another node that answers.
set -euo pipefail

check_only=false
if [[ "${1:-}" == --check ]]; then check_only=true; shift; fi
folder="$(cd "${1:?usage: restore.sh [--check] BACKUP_FOLDER}" && pwd)"
stack="${STACK_NAME:?set STACK_NAME (make restore reads it from .env)}"
network="${DOCKER_NETWORK:-${stack}}"
helper_image="labhub/hub:${LABHUB_VERSION:?set LABHUB_VERSION}"
# What commands in the hub's container run as (the Makefile's HUB_ACCOUNT: on a Swarm that
# container starts as root, which may not read the hub's files).
hub_account="${HUB_ACCOUNT:?set HUB_ACCOUNT (make restore sets it)}"
hub_volume="${stack}-hub-data"

(cd "${folder}" && sha256sum --quiet -c SHA256SUMS) || {
  echo "restore: ${folder} fails its checksums, nothing restored" >&2
  exit 1
}

swarm=false
if [[ "${ENGINE:-docker}" == swarm ]]; then swarm=true; fi
hub="${stack}-hub"
# A command in the hub's container, as the hub's account; `in_hub -i ...` gives it stdin.
in_hub() {
  local options=(--user "${hub_account}")
  if [[ "$1" == -i ]]; then
    options+=(-i)
    shift
  fi
  docker exec "${options[@]}" "${hub}" "$@"
}
problems=()
node_option=()
if [[ -n "${NODE:-}" ]]; then
  node_option=(--node "${NODE}")
  if [[ "${swarm}" == false ]]; then
    problems+=("NODE= is for ENGINE=swarm (one host has one node): leave it out")
  elif [[ -z "${ONLY_USERS:-}" ]]; then
    problems+=("NODE= goes with ONLY_USERS (a whole restore writes each home where the backup's database records it): name the users to restore onto ${NODE}")
  fi
fi
volumes=()
users=()
if [[ -z "${ONLY_USERS:-}" ]]; then
  for archive in "${folder}"/volumes/*.tar.gz; do
    [[ -e "${archive}" ]] || continue
    volumes+=("$(basename "${archive}" .tar.gz)")
    users+=("$(awk -F'\t' -v v="${volumes[-1]}" '$2 == v {print $1}' "${folder}/users.tsv")")
  done
else
  for user in ${ONLY_USERS}; do
    volume="$(awk -F'\t' -v u="${user}" '$1 == u {print $2}' "${folder}/users.tsv")"
    if [[ -z "${volume}" || ! -f "${folder}/volumes/${volume}.tar.gz" ]]; then
      problems+=("no files of ${user} in ${folder}")
    else
      volumes+=("${volume}")
      users+=("${user}")
    fi
  done
fi
hub_tmp="/tmp/restore-$$.sqlite"
db_option=()
cleanup() {
  if ((${#db_option[@]})); then in_hub rm -f "${hub_tmp}" || true; fi
}
trap cleanup EXIT
if [[ "${swarm}" == true ]]; then
  # A user's servers are services labelled with their name (the hub image tells the label).
  label="$(docker run --rm --network none "${helper_image}" labhub owner-label)"
  if [[ -z "${ONLY_USERS:-}" ]]; then
    for name in $(docker service ls --filter "label=${label}" --format '{{.Name}}'); do
      problems+=("server ${name} is running: a whole restore needs every user server stopped (admin panel: Stop All); or restore files only (ONLY_USERS)")
    done
    # The home nodes a whole restore writes to are the ones the backup's database records.
    in_hub -i sh -c "umask 077 && cat > ${hub_tmp}" \
      <"${folder}/jupyterhub.sqlite"
    db_option=(--db "${hub_tmp}")
  fi
  for user in ${ONLY_USERS:-}; do
    for name in $(docker service ls --filter "label=${label}=${user}" --format '{{.Name}}'); do
      problems+=("server ${name} of ${user} is running: stop it first")
    done
  done
  # Each home's archive and node, checked where it will be written (nothing changes).
  for i in "${!volumes[@]}"; do
    if ! said="$(gzip -dc "${folder}/volumes/${volumes[i]}.tar.gz" |
      in_hub -i labhub home-restore --check "${db_option[@]}" "${node_option[@]}" \
        "${users[i]}" 2>&1)"; then
      problems+=("${said##*$'\n'}")
    fi
  done
elif [[ -z "${ONLY_USERS:-}" ]]; then
  # User containers' names start with what labhub.contract says (the hub image tells).
  prefix="$(docker run --rm --network none "${helper_image}" labhub container-prefix "${network}")"
  mapfile -t running < <(docker ps --format '{{.Names}}' | awk -v p="${prefix}" 'index($0, p) == 1')
  for name in "${running[@]}"; do
    [[ -n "${name}" ]] && problems+=("server ${name} is running: a whole restore needs every user server stopped (admin panel: Stop All); or restore files only (ONLY_USERS)")
  done
fi
if [[ "${swarm}" == false ]]; then
  for volume in "${volumes[@]}"; do
    if [[ -n "$(docker ps -q --filter "volume=${volume}")" ]]; then
      problems+=("${volume} is in use by a running server: stop that server first")
    fi
  done
fi
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

# ENGINE=swarm: one home on its node (or NODE); its current files saved first, put back on
# failure (where they were: the home node is switched to NODE only once it is written).
restore_on_its_node() {
  local user="$1" volume="$2" saved="${keep}/$2.tar.gz" status=0
  echo "restore: ${user} (${volume}, on ${NODE:-its node})"
  in_hub labhub home-archive "${db_option[@]}" "${user}" | gzip >"${saved}" ||
    status=$?
  case "${status}" in
    0) ;;
    2) rm -f "${saved}" ;; # no home there yet: nothing to keep
    *) echo "restore: ${user}'s current home could not be saved (above): not restored" >&2
       return 1 ;;
  esac
  status=0
  gzip -dc "${folder}/volumes/${volume}.tar.gz" |
    in_hub -i labhub home-restore "${db_option[@]}" "${node_option[@]}" "${user}" ||
    status=$?
  if ((status == 1)) && [[ -f "${saved}" ]]; then
    echo "restore: putting ${user}'s home back as it was (${saved})" >&2
    gzip -dc "${saved}" | in_hub -i labhub home-restore "${db_option[@]}" "${user}" ||
      echo "restore: ${user}'s home could not be put back either: its files are in ${saved}" >&2
  fi
  return "${status}"
}

if [[ "${swarm}" == true ]]; then
  keep="$(dirname "${folder}")/before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -m 0700 "${keep}"
  for i in "${!volumes[@]}"; do
    restore_on_its_node "${users[i]}" "${volumes[i]}" || {
      echo "restore: stopped at ${users[i]}: homes before them were restored, the rest and" \
        "the databases were not; their files before the restore are in ${keep}" >&2
      exit 1
    }
  done
  echo "restore: the homes' files before the restore are kept in ${keep}"
  if [[ -z "${ONLY_USERS:-}" ]]; then
    docker stop "${hub}" >/dev/null
    trap 'docker start "${hub}" >/dev/null; cleanup' EXIT
  fi
  volumes=() # written above, on their nodes
fi

if [[ -z "${ONLY_USERS:-}" ]]; then
  # ENGINE=swarm: the Docker proxy reads the GPU database from the hub's volume, read-only
  # (compose/swarm.yml), and keeps running; only the hub writes it.
  writers=(--filter "volume=${hub_volume}")
  if [[ "${swarm}" == true ]]; then writers=(--filter "name=^${hub}\$"); fi
  if [[ -n "$(docker ps -q "${writers[@]}")" ]]; then
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
if [[ "${swarm}" == true ]]; then count="${#users[@]}"; fi
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
