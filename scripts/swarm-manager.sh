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
#   scripts/swarm-manager.sh node-proxies NAME IMAGE SOCKET NETWORK ALLOWED_IMAGES QUOTA_ROOT
#                                                  a Docker proxy on every node (PROXY_POLICY=node)
#   scripts/swarm-manager.sh metrics-proxies NAME IMAGE SOCKET NETWORK
#                                                  a read-only one on every node, for the
#                                                  per-user metrics (PROXY_POLICY=node-metrics)
#   scripts/swarm-manager.sh remove-node-proxies NAME   either kind
#   scripts/swarm-manager.sh diskquota NETWORK IMAGE QUOTA_ROOT DISK_QUOTA_MAX
#                                                  the diskquota service on every node (QUOTA_ROOT)
#   scripts/swarm-manager.sh remove-diskquota NETWORK
#   scripts/swarm-manager.sh datasets NETWORK IMAGE < FOLDERS
#                                                  warn about each node that lacks one of
#                                                  DATASETS' host folders (NAME<TAB>FOLDER lines)
#
# The engine is Docker's usual one: DOCKER_HOST if set, else the local socket. With
# ENV_FILE naming the lab's .env whose REGISTRY_USERNAME is set, the global services are
# created with that pull login for their nodes (`service_create`).
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

# The Swarm's address pools, one a line: where every overlay network, users' own included,
# gets its subnet. Engine 20.10 reports none when `swarm init` was given none: Docker's default.
address_pools() {
  local pool
  pool="$(docker info --format '{{range .Swarm.Cluster.DefaultAddrPool}}{{println .}}{{end}}')"
  echo "${pool:-10.0.0.0/8}" | sed '/^$/d'
}

never() {
  local net
  {
    docker node ls --quiet | xargs -r docker node inspect --format '{{.Status.Addr}}'
    address_pools
    docker network ls --quiet --filter driver=bridge \
      | xargs -r docker network inspect --format '{{range .IPAM.Config}}{{println .Subnet}}{{end}}'
  } | while read -r net; do
    if [[ -n "$net" ]]; then printf -- '--never %s\n' "$net"; fi
  done
}

# What the frontends' own firewall needs (labhub.frontguard): users' servers have addresses
# in the pools; the lab's overlay network NAME, where the hub and CHP talk, is trusted.
frontend_networks() {
  local name="$1"
  address_pools | sed 's/^/users /'
  docker network inspect --format '{{range .IPAM.Config}}{{println .Subnet}}{{end}}' "$name" \
    | sed '/^$/d; s/^/lab /'
}

# A global service of labhub's Docker proxy in front of each node's engine (SOCKET, a Swarm
# mount template such as /run/engines/{{.Node.ID}}.sock where nodes share one filesystem),
# for home moves (labhub.homemove, POLICY node), or MONITORING=true's read-only one for the
# per-user metrics (labhub.containermetrics, POLICY node-metrics). Its own internal overlay
# network NAME, which only the hub's container (or the exporter's) joins (compose/swarm.yml):
# no published port, no routing mesh, no way from a user's network. Made anew at each make
# up, so it runs this version's image. Its health check is the proxy's /_ping, not the hub
# image's (a Swarm task runs once healthy). With QUOTA_ROOT the home moves' one relays a
# home's quota to its node's diskquota service (below), and reads its homes' usage there,
# whose sockets' volume it mounts (an empty volume without QUOTA_ROOT): one of the policy's
# own arguments. It also reads its node's GPUs' utilisation with nvidia-smi for the GPU
# service (labhub.gpu.readings): it sees all of them (NVIDIA_VISIBLE_DEVICES=all, with the
# nodes' default runtime nvidia; nvidia-smi only, NVIDIA_DRIVER_CAPABILITIES=utility), which
# adds no reach to a container that holds its node's engine socket. The metrics one mounts
# the same sockets' volume, read-only, to answer its node's homes' usage to the exporter.
node_proxies() {
  local name="$1" image="$2" sock="$3" lab_network="$4" policy="$5"
  shift 5  # the rest: the policy's own --env and --mount arguments
  docker service rm "$name" >/dev/null 2>&1 || true
  if ! docker network inspect "$name" >/dev/null 2>&1; then
    docker network create --driver overlay --attachable --internal \
      --label labhub.node-proxies=true "$name" >/dev/null
  fi
  service_create --detach --quiet --name "$name" --mode global \
    --network "$name" --endpoint-mode dnsrr --no-resolve-image \
    --read-only --user root --label labhub.node-proxies=true \
    --mount "type=bind,source=${sock},target=/var/run/docker.sock" \
    --env PROXY_POLICY="$policy" --env DOCKER_NETWORK="$lab_network" "$@" \
    --health-cmd "curl -fsS -o /dev/null http://127.0.0.1:2375/_ping" \
    --health-interval 10s --health-timeout 5s --health-retries 3 --health-start-period 5s \
    "$image" python -m labhub.dockerproxy >/dev/null
  wait_global "$name" "a Docker proxy" \
    "Is the image ${image} on every node, and the socket ${sock} (NODE_DOCKER_SOCKET) there?"
}

# `docker service create`, with ENV_FILE's REGISTRY_USERNAME and REGISTRY_PASSWORD (a pull
# account of REGISTRY) handed to the nodes that pull the image (--with-registry-auth),
# from a Docker config of its own, removed afterwards: never the caller's `docker login`.
service_create() {
  local username="" password="" registry config status=0
  if [[ -n "${ENV_FILE:-}" ]]; then
    username="$(env_value REGISTRY_USERNAME)"
    password="$(env_value REGISTRY_PASSWORD)"
  fi
  if [[ -z "$username" ]]; then
    docker service create "$@"
    return
  fi
  registry="$(env_value REGISTRY)"
  config="$(mktemp -d)"
  printf '{"auths": {"%s": {"auth": "%s"}}}\n' "${registry%%/*}" \
    "$(printf '%s:%s' "$username" "$password" | base64 -w0)" > "${config}/config.json"
  DOCKER_CONFIG="$config" docker service create --with-registry-auth "$@" || status=$?
  rm -rf "$config"
  return "$status"
}

# A variable's last value in ENV_FILE, as the Makefile reads it.
env_value() {
  { grep -E "^$1=" "$ENV_FILE" || true; } | tail -n1 | cut -d= -f2-
}

# A global service runs one task per node: wait until each node's runs, else say which
# failed where, and what to check (HINT).
wait_global() {
  local name="$1" what="$2" hint="$3" attempt replicas
  for attempt in $(seq 60); do
    replicas="$(docker service ls --filter "name=${name}" --format '{{.Name}} {{.Replicas}}' \
      | awk -v name="$name" '$1 == name {print $2}')"
    if [[ "$replicas" =~ ^([0-9]+)/([0-9]+)$ && "${BASH_REMATCH[1]}" == "${BASH_REMATCH[2]}" \
          && "${BASH_REMATCH[2]}" != 0 ]]; then
      echo "${what} runs on each of the ${BASH_REMATCH[2]} nodes (${name})"
      return 0
    fi
    [[ "$attempt" == 60 ]] || sleep 2
  done
  echo "make up: ${what} (${name}) does not run on every node after 120 s (${replicas:-none})." >&2
  docker service ps --no-trunc --format '  node {{.Node}}: {{.CurrentState}} {{.Error}}' "$name" >&2
  echo "  ${hint} (docker service ps --no-trunc ${name})" >&2
  exit 1
}

# The Unix sockets' volume between a node's diskquota service and that node's Docker
# proxies alone (a local volume of this name on each node), named after the lab's network.
diskquota_socket() {
  echo "$1-diskquota-node-socket"
}

# QUOTA_ROOT (docs/admin-guide.md#disk-quotas): labhub's diskquota service on every node,
# a global service NETWORK-diskquota making each home's btrfs subvolume there with its
# limit. Root with CAP_SYS_ADMIN and CHOWN only, read-only, no secret, no Docker socket,
# QUOTA_ROOT (the same path on every node) and its sockets' volume only: the hub's socket
# and the usage socket (labhub.diskquota.NODE_USAGE_SOCKET), which only the node's Docker
# proxies also mount (each holds the node's engine socket anyway). A Swarm task cannot have no network: it gets an internal overlay
# network of its own that nothing else joins (not attachable), and listens on none. The
# hub reaches it through the node's Docker proxy (labhub.dockerproxy), which relays the
# checked request to the one socket and answers the homes' usage from the other.
diskquota() {
  local lab_network="$1" image="$2" root="$3" most="$4" name="$1-diskquota"
  docker service rm "$name" >/dev/null 2>&1 || true
  if ! docker network inspect "$name" >/dev/null 2>&1; then
    docker network create --driver overlay --internal --label labhub.diskquota=true \
      "$name" >/dev/null
  fi
  service_create --detach --quiet --name "$name" --mode global \
    --network "$name" --endpoint-mode dnsrr --no-resolve-image \
    --read-only --user root --cap-drop ALL --cap-add SYS_ADMIN --cap-add CHOWN \
    --label labhub.diskquota=true \
    --mount "type=bind,source=${root},target=${root}" \
    --mount "type=volume,source=$(diskquota_socket "$lab_network"),target=/run/labhub-diskquota" \
    --env QUOTA_ROOT="$root" --env DISK_QUOTA_MAX="$most" \
    --health-cmd "[ -S /run/labhub-diskquota/diskquota.sock ]" \
    --health-interval 10s --health-timeout 5s --health-retries 3 --health-start-period 10s \
    "$image" labhub-diskquota run --usage-socket /run/labhub-diskquota/usage.sock >/dev/null
  wait_global "$name" "labhub's diskquota service" \
    "Is ${root} (QUOTA_ROOT) on btrfs with quotas on, on every node?"
}


# DATASETS' host folders (NAME<TAB>FOLDER lines on stdin, from `labhub dataset-folders`) on
# every ready, active node: a server's dataset is a bind of the same path on whichever node
# runs it, and a node without it fails that server's start. One global job per folder binds
# it read-only there and, as the users' servers run (SERVER_USER, no capability, no network
# of the lab's), checks that it can list it. A node without the folder rejects the task
# ("bind source path does not exist", which the engine retries), one where the users cannot
# read it fails it: each is a warning naming node and folder; make up goes on. The jobs are
# removed.
SERVER_USER="1000:100"  # labhub.contract.CONTAINER_USER (hub/tests/test_cli.py checks)
datasets() {
  local network="$1" image="$2" name folder job i attempt node answers ready hostname why
  local problems=0
  local -a jobs=() names=() folders=()
  while IFS=$'\t' read -r name folder; do
    [[ -n "${folder}" ]] || continue
    job="${network}-dataset-check-${#jobs[@]}"
    docker service rm "${job}" >/dev/null 2>&1 || true
    service_create --detach --quiet --name "${job}" --mode global-job --restart-condition none \
      --no-resolve-image --read-only --user "${SERVER_USER}" --cap-drop ALL \
      --label labhub.dataset-check=true \
      --mount "type=bind,source=${folder},target=/dataset,readonly" \
      "${image}" sh -c 'test -r /dataset && test -x /dataset' >/dev/null
    jobs+=("${job}") names+=("${name}") folders+=("${folder}")
  done
  [[ ${#jobs[@]} -gt 0 ]] || return 0
  ready="$(docker node ls --format '{{.ID}} {{.Status}} {{.Availability}}' \
    | awk '$2 == "Ready" && $3 == "Active" {print $1}')"
  for i in "${!jobs[@]}"; do
    for attempt in $(seq 60); do
      answers="$(job_answers "${jobs[$i]}")"
      # shellcheck disable=SC2086  # the node IDs, one word each
      ! all_answered "${answers}" ${ready} || break
      [[ "${attempt}" == 60 ]] || sleep 0.5
    done
    for node in ${ready}; do
      if grep -q "^${node} complete " <<<"${answers}"; then
        continue
      fi
      problems=$((problems + 1))
      hostname="$(docker node inspect --format '{{.Description.Hostname}}' "${node}")"
      if grep -q "^${node} failed " <<<"${answers}"; then
        echo "make up: warning: node ${hostname} (${node}) has the folder ${folders[$i]}" \
          "(DATASETS ${names[$i]}), but the users' servers (uid ${SERVER_USER%:*}, gid" \
          "${SERVER_USER#*:}) cannot read it: chmod -R a+rX ${folders[$i]} there." >&2
        continue
      fi
      why="$(grep -m1 "^${node} rejected " <<<"${answers}" | cut -d' ' -f3-)"
      echo "make up: warning: node ${hostname} (${node}) has no folder ${folders[$i]}" \
        "(DATASETS ${names[$i]}): ${why:-no answer within 30 s}. A server that mounts it" \
        "would not start there: make the folder there (the same path on every node, e.g." \
        "one NFS export mounted on each), or drain the node." >&2
    done
    docker service rm "${jobs[$i]}" >/dev/null
  done
  if [[ ${problems} == 0 ]]; then
    echo "the datasets' ${#jobs[@]} host folders are on each of the $(wc -w <<<"${ready}")" \
      "nodes, readable by the users' servers"
  fi
}

# A global job's tasks so far, one line each: NODE-ID STATE ERROR.
job_answers() {
  local tasks
  mapfile -t tasks < <(docker service ps --quiet --no-trunc "$1")
  [[ ${#tasks[@]} -gt 0 ]] || return 0
  docker inspect --format '{{.NodeID}} {{.Status.State}} {{.Status.Err}}' "${tasks[@]}"
}

# Whether each node (the arguments after ANSWERS, job_answers' lines) has a finished task.
all_answered() {
  local answers="$1" node
  shift
  for node in "$@"; do
    grep -qE "^${node} (complete|rejected|failed) " <<<"${answers}" || return 1
  done
}

# A global service and its own network of the same name (the node proxies', diskquota's).
remove_global() {
  local name="$1" attempt
  docker service rm "$name" >/dev/null 2>&1 || true
  remove_network "$name"
  # The manager keeps its local copy of a removed overlay network until its own task left it.
  for attempt in $(seq 30); do
    docker network inspect "$name" >/dev/null 2>&1 || return 0
    [[ "$attempt" == 30 ]] || sleep 1
  done
  echo "make down: the network ${name} is still listed after 30 s (docker network inspect ${name})" >&2
  exit 1
}

main() {
  case "${1:-}" in
    check) check ;;
    never) never ;;
    frontend-networks) frontend_networks "${2:?usage: $0 frontend-networks NAME}" ;;
    network) network "${2:?usage: $0 network NAME}" ;;
    remove-network) remove_network "${2:?usage: $0 remove-network NAME}" ;;
    node-proxies)
      [[ $# == 7 ]] || { echo "usage: $0 node-proxies NAME IMAGE SOCKET NETWORK ALLOWED_IMAGES QUOTA_ROOT" >&2; exit 2; }
      node_proxies "$2" "$3" "$4" "$5" node --env ALLOWED_IMAGES="$6" --env QUOTA_ROOT="$7" \
        --env NVIDIA_VISIBLE_DEVICES=all --env NVIDIA_DRIVER_CAPABILITIES=utility \
        --mount "type=volume,source=$(diskquota_socket "$5"),target=/run/labhub-diskquota" ;;
    metrics-proxies)
      [[ $# == 5 ]] || { echo "usage: $0 metrics-proxies NAME IMAGE SOCKET NETWORK" >&2; exit 2; }
      node_proxies "$2" "$3" "$4" "$5" node-metrics \
        --mount "type=volume,source=$(diskquota_socket "$5"),target=/run/labhub-diskquota,readonly" ;;
    remove-node-proxies) remove_global "${2:?usage: $0 remove-node-proxies NAME}" ;;
    diskquota)
      [[ $# == 5 ]] || { echo "usage: $0 diskquota NETWORK IMAGE QUOTA_ROOT DISK_QUOTA_MAX" >&2; exit 2; }
      diskquota "$2" "$3" "$4" "$5" ;;
    remove-diskquota) remove_global "${2:?usage: $0 remove-diskquota NETWORK}-diskquota" ;;
    datasets)
      [[ $# == 3 ]] || { echo "usage: $0 datasets NETWORK IMAGE < FOLDERS" >&2; exit 2; }
      datasets "$2" "$3" ;;
    *) echo "usage: $0 check | network NAME | remove-network NAME | node-proxies ..." \
            "| metrics-proxies ... | remove-node-proxies NAME | diskquota ... | remove-diskquota NETWORK" \
            "| datasets NETWORK IMAGE | never | frontend-networks NAME" >&2
       exit 2 ;;
  esac
}

# Sourced (tests/test_registry.py calls service_create), it only defines the functions.
[[ "${BASH_SOURCE[0]}" != "$0" ]] || main "$@"
