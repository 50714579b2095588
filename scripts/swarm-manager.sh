#!/usr/bin/env bash
# ENGINE=swarm: what `make up` and `make down` need of the Swarm manager (docs/scale-out.md).
#
#   scripts/swarm-manager.sh check                 this engine is a Swarm manager
#   scripts/swarm-manager.sh network NAME          the lab's attachable overlay network, made if missing
#   scripts/swarm-manager.sh remove-network NAME   removed, once the users' tasks on it are gone
#   scripts/swarm-manager.sh never                 what the egress proxy never forwards to, as
#                                                  --never arguments: every node's address, the
#                                                  Swarm's overlay address pool, the manager's
#                                                  bridge networks (its own addresses on them)
#
# The engine is Docker's usual one: DOCKER_HOST if set, else the local socket.
set -euo pipefail

engine="${DOCKER_HOST:-the local Docker engine}"

check() {
  local state
  state="$(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}')"
  case "$state" in
    "active true") ;;
    "active false")
      echo "make up: ENGINE=swarm, but ${engine} is a Swarm worker, not a manager." >&2
      echo "  Run make up on a manager (docker node ls there lists the nodes), or promote" \
           "this node there: docker node promote <this node>." >&2
      exit 2 ;;
    *)
      echo "make up: ENGINE=swarm, but ${engine} is not in a Swarm (state: ${state%% *})." >&2
      echo "  Make this host the manager: docker swarm init --advertise-addr <its LAN address>," >&2
      echo "  then on each other node the \`docker swarm join\` command it prints;" \
           "or set ENGINE=docker for one host." >&2
      exit 2 ;;
  esac
}

network() {
  local name="$1" kind
  if kind="$(docker network inspect --format '{{.Driver}} {{.Scope}} {{.Attachable}}' "$name" 2>/dev/null)"; then
    if [[ "$kind" != "overlay swarm true" ]]; then
      echo "make up: the network ${name} (DOCKER_NETWORK) exists but is not an attachable" \
           "overlay network (driver, scope, attachable: ${kind})." >&2
      echo "  Remove it (docker network rm ${name}) or set another DOCKER_NETWORK." >&2
      exit 2
    fi
    return
  fi
  docker network create --driver overlay --attachable "$name" >/dev/null
  echo "made the lab's overlay network ${name}"
}

remove_network() {
  local name="$1" attempt
  docker network inspect "$name" >/dev/null 2>&1 || return 0
  # The removed services' tasks leave the network within seconds.
  for attempt in $(seq 30); do
    docker network rm "$name" >/dev/null 2>&1 && return 0
    [[ "$attempt" == 30 ]] || sleep 1
  done
  echo "make down: the network ${name} is still in use after 30 s:" \
       "docker network inspect ${name} shows by what" >&2
  exit 1
}

never() {
  local net pool
  # Engine 20.10 reports no pool when `swarm init` was given none: Docker's default.
  pool="$(docker info --format '{{range .Swarm.Cluster.DefaultAddrPool}}{{println .}}{{end}}')"
  {
    docker node ls --quiet | xargs -r docker node inspect --format '{{.Status.Addr}}'
    echo "${pool:-10.0.0.0/8}"
    docker network ls --quiet --filter driver=bridge \
      | xargs -r docker network inspect --format '{{range .IPAM.Config}}{{println .Subnet}}{{end}}'
  } | while read -r net; do
    if [[ -n "$net" ]]; then printf -- '--never %s\n' "$net"; fi
  done
}

case "${1:-}" in
  check) check ;;
  never) never ;;
  network) network "${2:?usage: $0 network NAME}" ;;
  remove-network) remove_network "${2:?usage: $0 remove-network NAME}" ;;
  *) echo "usage: $0 check | network NAME | remove-network NAME | never" >&2; exit 2 ;;
esac
