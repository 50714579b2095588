"""What the Docker socket proxy lets through: pure rules, no I/O.

Three policies, one per client of the proxy:

* `Policy` (the hub): only the calls DockerSpawner and `labhub.volumes` make, and a
  container-create body only if every key in it is one LabSpawner sends, with every
  value inside its bounds (an allow-list: an unknown key anywhere is refused by name).
  In Swarm mode (`check_swarm_request`, the proxy in front of the manager) the same
  policy admits the service calls of `labhub.swarmspawner.LabSwarmSpawner` instead, and
  in front of each node's engine (`check_node_request`, PROXY_POLICY=node) the users'
  volumes and the never-started copy helper `labhub.homemove` moves homes with;
* `FrontendPolicy` (nginx-proxy and acme-companion, `compose/nginx-proxy.yml`): read
  container metadata and events, and reload the nginx-proxy container;
* `MetricsPolicy` (`labhub.containermetrics`, MONITORING=true): list the stack's user
  containers, read one sample of a user container's resource use, and the sizes of the
  stack's user volumes (`GET /system/df`, answered by the relay from a cached call and
  cut down to those volumes by `user_volume_sizes`), nothing else; in Swarm mode
  (PROXY_POLICY=node-metrics, in front of each node's engine) the same reads of the
  users' task containers on that node, and its quota homes' usage (QUOTA_ROOT).

`check_request` / `check_frontend_request` / `check_metrics_request` return an
`Allowed`: the request-target rebuilt from what was checked (route and known query
parameters, re-encoded), which is all the relay forwards, and the container whose owner
label the relay must verify first. The relay (`labhub.dockerproxy`) does the HTTP
framing and the I/O.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .contract import (
    CONTAINER_USER,
    GPU_DEVICES_LABEL,
    GPU_HOLDER_LABEL,
    HOME_DIR,
    OWNER_LABEL,
    USER_LOG_CONFIG,
    VISIBLE_DEVICES_ENV,
    container_name_prefix,
    quota_home_options,
    swarm_home_options,
    user_network_name,
    user_network_prefix,
    user_server_name,
    volume_name_for,
    volume_prefix,
)
from .datasets import mount_type
from .diskquota import QUOTA_HOME_ROUTE, QUOTA_USAGE_ROUTE
from .gpu.inventory import NODE_DEVICES_ROUTE, NODE_UTILISATION_ROUTE
from .hometar import PARENT, copy_helper, copy_helper_prefix

MAX_BODY = 1024 * 1024
_GIB = 1024**3


class Refused(Exception):
    """A request the client has no business making; the message says why."""


@dataclass(frozen=True)
class Allowed:
    """A checked request: the target and body to forward, the object to owner-check
    (a container, or with `owned_kind` "service" a Swarm service).

    `body` is the checked JSON re-serialised, never the client's bytes.
    """

    target: str
    version: str = ""
    owned_container: str | None = None
    body: bytes = b""
    owned_kind: str = "container"
    # Set when the owned container must also be on this network (one stack's users only).
    owner_network: str = ""
    # Set for GET /system/df: the relay answers itself with the sizes of this stack's user
    # volumes (`user_volume_sizes`), from one engine call every DISK_USAGE_EVERY seconds.
    volumes_of: str = ""
    # Set for a Swarm service asking for GPUs: the relay checks it against the GPU record
    # and the node list (`check_gpu_claim`) before the manager sees the service.
    gpu_claim: GpuClaim | None = None
    # Set for a node's tar upload (PUT .../archive): the relay streams the body through
    # labhub.hometar.rewrite, checking and re-writing every member, instead of reading it.
    tar_upload: bool = False
    # Set for a node's disk-quota home (home volume, limit in bytes): the relay asks its
    # node's diskquota service (labhub.diskquota.request_home), not the engine.
    quota_home: tuple[str, int] | None = None
    # Set for the removal of a node's disk-quota home (its volume name): the relay asks its
    # node's diskquota service (labhub.diskquota.request_removal) once its engine has no
    # volume of that name, so that no home in use is deleted.
    quota_home_removal: str = ""
    # Set for a node's homes' usage: the relay answers itself, from its node's diskquota
    # usage socket (labhub.diskquota.read_usage), the homes of this volume prefix only.
    quota_usage_of: str = ""
    # Set for a node's GPUs (NODE_UTILISATION_ROUTE or NODE_DEVICES_ROUTE, which it is): the
    # relay answers itself, with nvidia-smi on its node (labhub.gpu.inventory).
    nvidia_smi: str = ""
    # Set for a Swarm service the manager creates: the relay sends it as X-Registry-Auth,
    # the registry login the node pulls the image with (labhub.registry.pull_auth).
    registry_auth: str = ""


@dataclass(frozen=True)
class Policy:
    """What the hub may create: its image and network, within these upper bounds.

    `dataset_binds` are the declared datasets' read-only binds (`labhub.datasets`), the
    only mounts allowed besides user volumes. With `quota_root` (QUOTA_ROOT), a user
    volume may be bound onto its own folder there (`labhub.contract.quota_home_options`),
    on one host as in a Swarm service's home mount.
    """

    allowed_images: frozenset[str]
    network: str
    dataset_binds: frozenset[str] = frozenset()
    quota_root: str = ""
    max_memory: int = 256 * _GIB
    max_cpus: int = 64
    max_pids: int = 65536
    max_shm: int = 64 * _GIB
    max_gpus: int = 16
    # Swarm mode: the containers the hub may connect to a user's network (the hub, CHP).
    frontend_containers: frozenset[str] = frozenset()
    # Swarm mode, SUBDOMAINS: the names a service's /etc/hosts may give (CHP's, at its
    # address on the user's network: labhub.contract.chp_host_names), no others.
    chp_host_names: frozenset[str] = frozenset()
    # Swarm mode, HOME_NFS: each home is mounted with exactly its NFS options, no others.
    home_nfs: str = ""
    # Swarm mode, REGISTRY_USERNAME: the login each service's node pulls its image with,
    # as X-Registry-Auth (labhub.registry.pull_auth); empty: anonymous pulls.
    registry_auth: str = ""


@dataclass(frozen=True)
class FrontendPolicy:
    """What nginx-proxy's docker-gen and acme-companion may do: read, and reload nginx."""

    nginx_container: str


@dataclass(frozen=True)
class MetricsPolicy:
    """What the container-metrics exporter may read: the list of its stack's user
    containers (on `network`) and each one's stats, one sample at a time. With `swarm`,
    in front of a Swarm node's engine: its users' task containers, each on its owner's
    own network (`labhub.contract.user_network_name`), and the node's homes' usage."""

    network: str
    swarm: bool = False


# --- Request targets ------------------------------------------------------------------
# No percent-encoding, no empty or dot segments in the path: the engine decodes
# `%2F` and cleans `..`, so such a path could name a route other than the one checked.
# The one escape allowed is %40 ("@" of an image's digest reference, which docker-py
# escapes), read as "@" before any route is matched and sent on as "@".
_PATH = re.compile(r"/(?:[A-Za-z0-9_.:/@-]|%40)*")
_QUERY = re.compile(r"[A-Za-z0-9_.~%&=+*-]*")
_VERSION = r"(?P<version>/v[0-9]{1,2}\.[0-9]{1,3})?"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,253}"
_IMAGE = r"[a-z0-9][a-z0-9._/-]{0,254}(?::[A-Za-z0-9_.-]{1,128})?"
# An image by digest in a registry (labhub.registry): host[:port]/name@sha256:<hex>.
_DIGEST_IMAGE = r"[a-z0-9][a-z0-9._:/-]{0,254}@sha256:[0-9a-f]{64}"
_BOOL = re.compile(r"(?:0|1|true|false|True|False)").fullmatch
_INT = re.compile(r"-?[0-9]{1,10}").fullmatch
_SIGNAL = re.compile(r"(?:SIG)?[A-Z0-9]{1,8}|[0-9]{1,2}").fullmatch
# A query parameter's check: truthy when the value is acceptable; None accepts any.
Accepts = Callable[[str], object]


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """(path, query) of an origin-form request-target, refusing anything ambiguous."""
    path, _, query = target.partition("?")
    if not _PATH.fullmatch(path) or "//" in path or re.search(r"/\.\.?(?:/|$)", path):
        raise Refused(f"path {path!r} is not a plain API path (no %-escapes, // or dot segments)")
    path = path.replace("%40", "@")
    if not _QUERY.fullmatch(query):
        raise Refused(f"query {query!r} has characters an API query does not need")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as error:
        raise Refused(f"query {query!r} is malformed: {error}") from error
    params = dict(pairs)
    if len(params) != len(pairs):
        raise Refused(f"a query parameter is given twice in {query!r}")
    return path, params


def _query(params: dict[str, str], allowed: Mapping[str, Accepts | None]) -> str:
    """The checked parameters, re-encoded; any other parameter is refused by name."""
    for key, value in params.items():
        if key not in allowed:
            raise Refused(f"query parameter {key!r} is not needed here")
        accepts = allowed[key]
        if accepts is not None and not accepts(value):
            raise Refused(f"query parameter {key}={value!r} is out of range")
    return "?" + urlencode(params) if params else ""


def _filters(value: str) -> bool:
    """`filters=` is a (short) JSON object, nothing else."""
    if len(value) > 4096:
        return False
    try:
        parsed = json.loads(value)
    except ValueError:
        return False
    return isinstance(parsed, dict) and all(isinstance(k, str) for k in parsed)


_LIST_QUERY: dict[str, Accepts | None] = {
    "all": _BOOL,
    "limit": _INT,
    "size": _BOOL,
    "trunc_cmd": _BOOL,
    "filters": _filters,
}


def _route(pattern: str, path: str) -> re.Match[str] | None:
    return re.fullmatch(_VERSION + pattern, path)


def check_request(policy: Policy, method: str, target: str, body: bytes) -> Allowed:
    """The hub's request, checked; raises Refused unless DockerSpawner would make it."""
    return _checked(_match_hub_route, "the hub", policy, method, target, body)


def _checked(
    match: Callable[[Policy, str, str, dict[str, str], bytes], Allowed | None],
    client: str,
    policy: Policy,
    method: str,
    target: str,
    body: bytes,
) -> Allowed:
    """`match`'s Allowed for the request, or Refused naming what the `client` never sends."""
    path, params = split_target(target)
    if method != "POST" and body:
        raise Refused(f"{method} {path} takes no request body")
    found = match(policy, method, path, params, body)
    if found is None:
        raise Refused(f"{method} {path} is not needed by {client}")
    return found


def _match_hub_route(
    policy: Policy, method: str, path: str, params: dict[str, str], body: bytes
) -> Allowed | None:
    if method == "GET" and (m := _route(r"/(?:_ping|version|info)", path)):
        return Allowed(path + _query(params, {}), m["version"] or "")
    if method == "GET" and (m := _route(r"/containers/json", path)):
        return Allowed(path + _query(params, _LIST_QUERY), m["version"] or "")
    if method == "POST" and (m := _route(r"/containers/create", path)):
        name = params.get("name", "")
        prefix = container_name_prefix(policy.network)
        if not re.fullmatch(_NAME, name) or not name.startswith(prefix):
            raise Refused(f"container name {name!r} must start with {prefix!r}")
        spec = parse_json(body)
        check_container_create(policy, spec)
        return Allowed(path + _query(params, {"name": None}), m["version"] or "", body=_dumps(spec))
    one = _route(rf"/containers/(?P<id>{_NAME})(?P<action>/[a-z]+)?", path)
    if one:
        # Every route that names one container, "json" and "create" included
        # (DELETE /containers/json removes a container called json).
        queries = _ONE_CONTAINER.get((method, one["action"] or ""))
        if queries is None:
            return None
        if method == "POST" and body:
            # API versions before 1.24 applied a HostConfig sent to start (privileged...).
            raise Refused(f"{path} takes no request body")
        return Allowed(path + _query(params, queries), one["version"] or "", one["id"])
    if method == "GET" and (m := _route(rf"/images/(?P<image>{_IMAGE})/json", path)):
        if m["image"] not in policy.allowed_images:
            raise Refused(f"image {m['image']!r} is not an allowed workspace image")
        return Allowed(path + _query(params, {}), m["version"] or "")
    if method == "GET" and (m := _route(r"/volumes", path)):
        return Allowed(path + _query(params, {"filters": _filters}), m["version"] or "")
    if method == "POST" and (m := _route(r"/volumes/create", path)):
        volume = parse_json(body)
        check_volume_create(policy, volume)
        return Allowed(path + _query(params, {}), m["version"] or "", body=_dumps(volume))
    if method in ("GET", "DELETE") and (m := _route(rf"/volumes/(?P<name>{_NAME})", path)):
        if not m["name"].startswith(prefix := volume_prefix(policy.network)):
            raise Refused(f"volume {m['name']!r} is not a user volume ({prefix}*)")
        return Allowed(path + _query(params, {}), m["version"] or "")
    return None


# (method, action) -> the query parameters it may carry. The owner check runs first.
_ONE_CONTAINER: dict[tuple[str, str], dict[str, Accepts | None]] = {
    ("GET", "/json"): {"size": _BOOL},
    ("POST", "/start"): {},
    ("POST", "/stop"): {"t": _INT},
    ("POST", "/kill"): {"signal": _SIGNAL},
    ("POST", "/wait"): {"condition": re.compile(r"not-running|next-exit|removed").fullmatch},
    # v removes the container's own anonymous volumes only; named volumes stay.
    # link=true would remove a link, not the container; docker-py always sends link=False.
    ("DELETE", ""): {"v": _BOOL, "force": _BOOL, "link": re.compile("0|false|False").fullmatch},
}


def check_frontend_request(
    policy: FrontendPolicy, method: str, target: str, body: bytes
) -> Allowed:
    """nginx-proxy's request, checked: metadata and events, and the nginx reload only."""
    path, params = split_target(target)
    if method == "GET":
        reads: tuple[tuple[str, dict[str, Accepts | None]], ...] = (
            (r"/(?:_ping|version|info)", {}),
            (r"/containers/json", _LIST_QUERY),
            (rf"/containers/{_NAME}/json", {"size": _BOOL}),
            (r"/events", {"since": _INT, "until": _INT, "filters": _filters}),
        )
        for pattern, queries in reads:
            if (m := _route(pattern, path)) and not body:
                return Allowed(path + _query(params, queries), m["version"] or "")
    nginx = re.escape(policy.nginx_container)
    if method == "POST" and (m := _route(rf"/containers/{nginx}/kill", path)) and not body:
        return Allowed(
            path + _query(params, {"signal": re.compile("(?:SIG)?HUP").fullmatch}),
            m["version"] or "",
        )
    if method == "POST" and (m := _route(rf"/containers/{nginx}/exec", path)):
        exec_spec = parse_json(body)
        if exec_spec != _NGINX_RELOAD_EXEC:
            raise Refused("only acme-companion's nginx reload may be run in nginx-proxy")
        return Allowed(path + _query(params, {}), m["version"] or "", body=_dumps(exec_spec))
    if method == "POST" and (m := _route(r"/exec/[0-9a-f]{64}/start", path)):
        start = parse_json(body)
        if start != {"Detach": False, "Tty": False}:
            raise Refused("exec start takes exactly {Detach: false, Tty: false}")
        return Allowed(path + _query(params, {}), m["version"] or "", body=_dumps(start))
    raise Refused(f"{method} {path} is not needed by nginx-proxy")


def check_metrics_request(policy: MetricsPolicy, method: str, target: str, body: bytes) -> Allowed:
    """The exporter's request, checked: its stack's user containers, one stats sample of a
    user container (the relay checks the owner label), the sizes of its stack's user
    volumes; in front of a Swarm node's engine also the usage of the node's quota homes of
    the stack (exactly `GET QUOTA_USAGE_ROUTE`, as a node proxy answers it); nothing else."""
    path, params = split_target(target)
    if method != "GET" or body:
        raise Refused(f"{method} {path}: the metrics exporter only reads (GET, no body)")
    if m := _route(r"/(?:_ping|version)", path):
        return Allowed(path + _query(params, {}), m["version"] or "")
    if m := _route(r"/containers/json", path):
        wanted = metrics_list_filters(policy.network, policy.swarm)
        given = params.get("filters", "")
        if set(params) != {"filters"} or not _filters(given) or json.loads(given) != wanted:
            raise Refused(f"the exporter lists its stack's user containers only: filters={wanted}")
        # The filters we checked, written by us (not the client's bytes).
        return Allowed(f"{path}?{urlencode({'filters': json.dumps(wanted)})}", m["version"] or "")
    if m := _route(rf"/containers/(?P<id>{_NAME})/stats", path):
        if params.get("stream") not in ("0", "false", "False"):
            raise Refused("stats must be one sample (stream=false), never a stream")
        queries: dict[str, Accepts | None] = {"stream": None, "one-shot": _BOOL}
        return Allowed(
            path + _query(params, queries),
            m["version"] or "",
            m["id"],
            owned_kind="task" if policy.swarm else "container",
            owner_network=policy.network,
        )
    if m := _route(r"/system/df", path):
        if params:
            raise Refused("disk usage takes no parameters")
        return Allowed(path, m["version"] or "", volumes_of=policy.network)
    if policy.swarm and path == QUOTA_USAGE_ROUTE:
        return Allowed(path + _query(params, {}), quota_usage_of=volume_prefix(policy.network))
    raise Refused(f"{method} {path} is not needed by the metrics exporter")


# The engine answers GET /system/df by sizing every image, every container's writable
# layer and every volume (it reads every file of every volume): the relay calls it at most
# once in this many seconds, whatever the exporter asks.
DISK_USAGE_EVERY = 300.0


def user_volume_sizes(disk_usage: Mapping[str, Any], network: str) -> dict[str, int]:
    """What the exporter gets of the engine's disk usage: each user volume of the stack
    on `network` and its size in bytes (none of the engine's images, containers, or other
    stacks' volumes). A volume the engine did not size (-1) is left out."""
    prefix = volume_prefix(network)
    sizes = {}
    for volume in disk_usage.get("Volumes") or []:
        size = (volume.get("UsageData") or {}).get("Size", -1)
        if str(volume.get("Name", "")).startswith(prefix) and size >= 0:
            sizes[volume["Name"]] = size
    return sizes


# The label the Swarm agent gives each task's container: the service's name.
SWARM_SERVICE_LABEL = "com.docker.swarm.service.name"


def metrics_list_filters(network: str, swarm: bool = False) -> dict[str, list[str]]:
    """The one container list the exporter makes: user containers on the stack's network;
    in Swarm mode (each on its owner's network) the users' task containers, named for the
    stack's user services (the name filter is the engine's regular expression)."""
    if swarm:
        prefix = "^/" + re.escape(container_name_prefix(network))
        return {"label": [OWNER_LABEL, SWARM_SERVICE_LABEL], "name": [prefix]}
    return {"label": [OWNER_LABEL], "network": [network]}


# acme-companion 2.5's reload_nginx (app/functions.sh) in the two-container setup:
# re-run docker-gen, then `nginx -s reload`, as the container's own (root) user.
_NGINX_RELOAD_EXEC = {
    "AttachStdin": False,
    "AttachStdout": True,
    "AttachStderr": True,
    "Tty": False,
    "Cmd": [
        "sh",
        "-c",
        "/app/docker-entrypoint.sh /usr/local/bin/docker-gen /app/nginx.tmpl "
        "/etc/nginx/conf.d/default.conf; /usr/sbin/nginx -s reload",
    ],
}


# --- Bodies ---------------------------------------------------------------------------
def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse keys given twice (in any case): Docker would merge them, json keeps one."""
    folded = [key.casefold() for key, _ in pairs]
    if len(set(folded)) != len(folded):
        raise Refused(f"a key is given twice in {[key for key, _ in pairs]}")
    for key, _ in pairs:
        # Go folds the long s (U+017F) and the Kelvin sign onto s and k.
        if not key.isascii():
            raise Refused(f"non-ASCII key {key!r}")
    return dict(pairs)


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object, as strictly as Docker should read it (no duplicate keys, no NaN)."""
    if len(body) > MAX_BODY:
        raise Refused(f"request body of {len(body)} bytes is too large")

    def no_constant(name: str) -> None:
        raise Refused(f"{name} is not JSON")

    try:
        value = json.loads(
            body or b"{}", object_pairs_hook=_unique_keys, parse_constant=no_constant
        )
    except ValueError as error:
        raise Refused(f"request body is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise Refused("request body is not a JSON object")
    return value


def _dumps(value: dict[str, Any]) -> bytes:
    """The checked body as it is forwarded: compact JSON written by us."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _folded(value: dict[str, Any]) -> dict[str, Any]:
    """Keys case-folded (one level), as Docker (Go) matches them case-insensitively."""
    return {key.casefold(): item for key, item in value.items()}


def _int_in(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Refused(
            f"{name}={value!r} is not a number from {low} to {high} (the proxy's bounds are "
            "labhub.dockerpolicy.Policy's; raise them there for a bigger machine)"
        )
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Refused(f"{name}={value!r} is not true or false")
    return value


def _strings(name: str, value: Any, most: int = 256) -> list[str]:
    if not isinstance(value, list) or len(value) > most:
        raise Refused(f"{name} must be a list of at most {most} strings")
    for item in value:
        if not isinstance(item, str) or len(item) > 65536 or "\0" in item:
            raise Refused(f"{name} holds {item!r}, not a plain string")
    return value


def _keys(where: str, value: Any, allowed: Iterable[str]) -> dict[str, Any]:
    """The object's keys, case-folded; any key LabSpawner does not send is refused by name."""
    if not isinstance(value, dict):
        raise Refused(f"{where} must be a JSON object")
    known = {key.casefold(): key for key in allowed}
    unknown = sorted(key for key in value if key.casefold() not in known)
    if unknown:
        raise Refused(f"{where}: {', '.join(unknown)} not allowed (not sent by LabSpawner)")
    return _folded(value)


def _null_or(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else check(name, value)


def check_container_create(policy: Policy, spec: dict[str, Any]) -> None:
    """The create body LabSpawner sends (see `test_dockerproxy_rules`), and nothing more."""
    config = _keys("create body", spec, _CONFIG_CHECKS)
    for key, value in config.items():
        _CONFIG_CHECKS[key](policy, value)
    for required in ("image", "user", "labels", "hostconfig"):
        if required not in config:
            raise Refused(f"create body: {required} is required")
    _check_home_is_the_owners(policy, config["labels"][OWNER_LABEL], _folded(config["hostconfig"]))


def _check_home_is_the_owners(policy: Policy, owner: str, host: dict[str, Any]) -> None:
    """A container mounts no user volume but its owner's: every server of a user (named
    servers too) shares that user's one home, and nobody else's."""
    home = volume_name_for(owner, policy.network)
    for bind in host.get("binds") or []:
        if bind not in policy.dataset_binds and bind.split(":", 1)[0] != home:
            raise Refused(f"bind {bind!r}: a container of {owner!r} mounts only {home}")


def _image(policy: Policy, value: Any) -> None:
    if value not in policy.allowed_images:
        raise Refused(f"image {value!r} is not an allowed workspace image")


def _user(_: Policy, value: Any) -> None:
    if value != CONTAINER_USER:
        raise Refused(f"User={value!r}: user containers run as {CONTAINER_USER}, never root")


def _labels(_: Policy, value: Any) -> None:
    if not isinstance(value, dict) or not value.get(OWNER_LABEL):
        raise Refused(f"containers must carry the {OWNER_LABEL} label")
    for key, item in value.items():
        if not key.startswith("labhub.") or not isinstance(item, str) or len(item) > 4096:
            raise Refused(f"label {key!r}={item!r}: only labhub.* labels with string values")


def _exposed_ports(_: Policy, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > 8:
        raise Refused("ExposedPorts must be an object of a few ports")
    for port, item in value.items():
        if not re.fullmatch(r"[0-9]{1,5}/tcp", port) or item not in (None, {}):
            raise Refused(f"ExposedPorts {port!r}: {item!r} is not a plain TCP port")


def _volumes(policy: Policy, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > _most_binds(policy):
        raise Refused("Volumes must be an object of a few mount points")
    for target, item in value.items():
        if not re.fullmatch(r"/[A-Za-z0-9_./-]*", target) or item not in (None, {}):
            raise Refused(f"Volumes {target!r}: {item!r} is not a plain mount point")


def _false(name: str) -> Callable[[Policy, Any], None]:
    def check(_: Policy, value: Any) -> None:
        if _bool(name, value):
            raise Refused(f"{name} must be false")

    return check


_CONFIG_CHECKS: dict[str, Callable[[Policy, Any], object]] = {
    "image": _image,
    "user": _user,
    "labels": _labels,
    "env": lambda _, v: _null_or(_strings)("Env", v),
    "cmd": lambda _, v: _null_or(_strings)("Cmd", v),
    "exposedports": _exposed_ports,
    "volumes": _volumes,
    "tty": _false("Tty"),
    "openstdin": _false("OpenStdin"),
    "stdinonce": _false("StdinOnce"),
    "attachstdin": _false("AttachStdin"),
    "attachstdout": lambda _, v: _bool("AttachStdout", v),
    "attachstderr": lambda _, v: _bool("AttachStderr", v),
    "networkdisabled": _false("NetworkDisabled"),
    "hostconfig": lambda policy, v: check_host_config(policy, v),
}


def check_host_config(policy: Policy, value: Any) -> None:
    """HostConfig: the lab's hardening exactly, limits within bounds, user volumes only."""
    host = _keys("HostConfig", value, _HOST_KEYS)
    for required in ("memory", "pidslimit", "networkmode", "capdrop", "securityopt"):
        if required not in host:
            raise Refused(f"HostConfig: {required} is required")
    memory = _int_in("Memory", host["memory"], 1, policy.max_memory)
    if host.get("memoryswap") not in (None, memory):
        raise Refused(f"MemorySwap={host['memoryswap']!r}: swap must equal Memory or be unset")
    _int_in("PidsLimit", host["pidslimit"], 1, policy.max_pids)
    if host.get("shmsize") is not None:
        _int_in("ShmSize", host["shmsize"], 1, policy.max_shm)
    _check_cpu(policy, host)
    if host["networkmode"] != policy.network:
        raise Refused(f"NetworkMode={host['networkmode']!r} is not the hub's network")
    if [str(c).upper() for c in _strings("CapDrop", host["capdrop"])] != ["ALL"]:
        raise Refused("containers must drop all capabilities (CapDrop: [ALL])")
    if _strings("SecurityOpt", host["securityopt"]) != ["no-new-privileges:true"]:
        raise Refused("SecurityOpt must be exactly [no-new-privileges:true]")
    for bind in _strings("Binds", host.get("binds") or [], _most_binds(policy)):
        _check_bind(policy, bind)
    for key in ("links", "mounts"):
        if host.get(key):
            raise Refused(f"{key} are not allowed (LabSpawner sends an empty list)")
    for key in ("autoremove", "init"):
        if key in host:
            _bool(key, host[key])
    if host.get("init"):
        raise Refused("Init must be false (tini is the image's entry point)")
    _check_writable_layer(host, memory)
    _check_log(host.get("logconfig"))
    requests = host.get("devicerequests") or []
    if not isinstance(requests, list) or len(requests) > 1:
        raise Refused("DeviceRequests: at most one NVIDIA device request")
    for request in requests:
        _check_device_request(policy, request)


_HOST_KEYS = (
    "Memory",
    "MemorySwap",
    "ShmSize",
    "NetworkMode",
    "CapDrop",
    "SecurityOpt",
    "Binds",
    "Links",
    "CpuQuota",
    "CpuPeriod",
    "NanoCpus",
    "PidsLimit",
    "AutoRemove",
    "Init",
    "Mounts",
    "DeviceRequests",
    "ReadonlyRootfs",
    "Tmpfs",
    "LogConfig",
)
# The /tmp memory file system's options (labhub.spawner.tmp_options); `size=` is required.
_TMPFS_FLAGS = frozenset({"rw", "exec", "noexec", "nosuid", "nodev", "mode=1777"})


def _check_writable_layer(host: dict[str, Any], memory: int) -> None:
    """A read-only root and a sized /tmp: the writable layer sits on the host's disk with
    no bound on overlay2 over ext4, so a container gets none (docs/security.md)."""
    if host.get("readonlyrootfs") is not True:
        raise Refused("ReadonlyRootfs must be true (the writable layer has no size bound)")
    tmpfs = host.get("tmpfs")
    if not isinstance(tmpfs, dict) or list(tmpfs) != ["/tmp"]:
        raise Refused(f"Tmpfs={tmpfs!r}: exactly one, at /tmp, with a size")
    options = tmpfs["/tmp"]
    if not isinstance(options, str):
        raise Refused(f"Tmpfs /tmp options {options!r} are not a string")
    sizes = [o for o in options.split(",") if o.startswith("size=")]
    others = [o for o in options.split(",") if not o.startswith("size=")]
    if len(sizes) != 1 or not re.fullmatch(r"size=[0-9]{1,15}", sizes[0]):
        raise Refused(f"Tmpfs /tmp {options!r}: give exactly one size=<bytes>")
    if not 1 <= int(sizes[0][5:]) <= memory:
        raise Refused(f"Tmpfs /tmp {options!r}: the size must be 1 to Memory ({memory})")
    if not set(others) <= _TMPFS_FLAGS:
        raise Refused(
            f"Tmpfs /tmp {options!r}: only {', '.join(sorted(_TMPFS_FLAGS))} besides size="
        )


def _check_log(value: Any) -> None:
    """Exactly the rotated log LabSpawner asks for: the log is on the host's disk and the
    container writes it."""
    if value is None:
        raise Refused(f"LogConfig is required: exactly {USER_LOG_CONFIG}")
    log = _keys("LogConfig", value, USER_LOG_CONFIG)
    if log != _folded(USER_LOG_CONFIG):
        raise Refused(f"LogConfig={value!r}: only {USER_LOG_CONFIG} (a rotated, bounded log)")


def _check_cpu(policy: Policy, host: dict[str, Any]) -> None:
    """A CPU limit as DockerSpawner sets it (CpuQuota per CpuPeriod) or as NanoCpus."""
    if host.get("nanocpus") is not None:
        if host.get("cpuquota") is not None or host.get("cpuperiod") is not None:
            raise Refused("give NanoCpus or CpuQuota/CpuPeriod, not both")
        _int_in("NanoCpus", host["nanocpus"], 1, policy.max_cpus * 10**9)
        return
    if host.get("cpuquota") is None or host.get("cpuperiod") is None:
        raise Refused("containers must have a CPU limit (CpuQuota and CpuPeriod, or NanoCpus)")
    period = _int_in("CpuPeriod", host["cpuperiod"], 1000, 1_000_000)
    _int_in("CpuQuota", host["cpuquota"], 1000, policy.max_cpus * period)


def _most_binds(policy: Policy) -> int:
    """A few user volumes, plus every declared dataset."""
    return 8 + len(policy.dataset_binds)


def _check_bind(policy: Policy, bind: str) -> None:
    """`<network>-user-<name>:<absolute path>:rw|ro` (a user volume) or a declared dataset's
    read-only bind, exactly as `labhub.datasets.Dataset.bind` writes it."""
    if bind in policy.dataset_binds:
        return
    match = re.fullmatch(rf"(?P<source>{_NAME}):(?P<target>/[A-Za-z0-9_./-]*)(?::(?:rw|ro))?", bind)
    prefix = volume_prefix(policy.network)
    if not match or not match["source"].startswith(prefix):
        raise Refused(
            f"bind {bind!r} is not a user volume ({prefix}<name>:/path:rw) "
            "nor a declared dataset (DATASETS)"
        )


def _check_device_request(policy: Policy, value: Any) -> None:
    """Exactly the GPUs the allocator chose: driver nvidia, explicit device IDs, no Count."""
    request = _keys(
        "DeviceRequests[]", value, ("Driver", "Count", "DeviceIDs", "Capabilities", "Options")
    )
    if request.get("driver") != "nvidia":
        raise Refused(f"device driver {request.get('driver')!r} is not allowed (nvidia only)")
    if request.get("count") not in (None, 0):
        raise Refused(f"Count={request.get('count')!r}: name the devices (DeviceIDs), no Count")
    ids = _strings("DeviceIDs", request.get("deviceids"), policy.max_gpus)
    if not ids or not all(re.fullmatch(r"[A-Za-z0-9:._-]{1,64}", i) for i in ids):
        raise Refused(f"DeviceIDs={ids!r} must name one or more GPUs")
    if request.get("capabilities") != [["gpu"]]:
        raise Refused(f"Capabilities={request.get('capabilities')!r} must be [[gpu]]")
    if request.get("options"):
        raise Refused("device request options are not allowed")


def check_volume_create(policy: Policy, spec: dict[str, Any]) -> None:
    """A user volume on the local driver with no options (options can bind a host path),
    or, with disk quotas, bound onto exactly its own folder under QUOTA_ROOT."""
    volume = _keys("volume", spec, ("Name", "Driver", "DriverOpts", "Labels"))
    name = volume.get("name")
    if not isinstance(name, str) or not re.fullmatch(_NAME, name):
        raise Refused(f"volume name {name!r} is not a plain name")
    if not name.startswith(prefix := volume_prefix(policy.network)):
        raise Refused(f"volume {name!r} is not a user volume ({prefix}*)")
    # The local driver's options can bind any host path (type=none, o=bind, device=/).
    if volume.get("driver") not in (None, "", "local"):
        raise Refused("volume drivers are not allowed (local only)")
    options = volume.get("driveropts")
    quota_home = quota_home_options(policy.quota_root, name) if policy.quota_root else None
    if options and options != quota_home:
        raise Refused(
            f"volume driver options {options!r} are not allowed: only a disk-quota home, "
            f"{quota_home_options(policy.quota_root or '<QUOTA_ROOT>', name)}"
        )
    labels = volume.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise Refused("volume labels must be strings")


def inspect_target(allowed: Allowed) -> str:
    """The inspect the relay makes for the owner check (same API version as the request)."""
    if allowed.owned_kind == "service":
        return f"{allowed.version}/services/{allowed.owned_container}"
    if allowed.owned_kind == "network":
        return f"{allowed.version}/networks/{allowed.owned_container}"
    return f"{allowed.version}/containers/{allowed.owned_container}/json"


def check_owner(
    name: str, status: int, inspected: bytes, *, kind: str = "container", network: str = ""
) -> None:
    """Refuse unless the inspected container (or service) carries the owner label and,
    with `network`, is on that network, or for a Swarm "task" container on its owner's own
    network of that stack (404s pass through). A container's labels are under Config, a
    service's under Spec, a network's at the top."""
    if status == 404:
        return  # the engine answers the real request with its own 404
    try:
        found = json.loads(inspected)
        where = {"service": found.get("Spec"), "network": found}.get(kind, found.get("Config"))
        labels = (where or {}).get("Labels") or {}
        networks = (found.get("NetworkSettings") or {}).get("Networks") or {}
    except (ValueError, AttributeError) as error:
        raise Refused(f"cannot read the labels of {kind} {name!r}") from error
    if not labels.get(OWNER_LABEL):
        raise Refused(f"{kind} {name!r} is not a labhub user {kind}")
    if kind == "task":
        network = user_network_name(str(labels[OWNER_LABEL]), network)
    if network and network not in networks:
        raise Refused(f"{kind} {name!r} is not a user {kind} of this stack ({network})")


# --- Swarm mode: the manager's service API (labhub.swarmspawner) ------------------------
def check_swarm_request(policy: Policy, method: str, target: str, body: bytes) -> Allowed:
    """The hub's request to a Swarm manager, checked; raises Refused unless
    LabSwarmSpawner would make it."""
    return _checked(_match_swarm_route, "the hub in Swarm mode", policy, method, target, body)


def _match_swarm_route(
    policy: Policy, method: str, path: str, params: dict[str, str], body: bytes
) -> Allowed | None:
    if method == "GET" and (m := _route(r"/(?:_ping|version|info)", path)):
        return Allowed(path + _query(params, {}), m["version"] or "")
    if method == "GET" and (m := _route(r"/nodes", path)):
        # Placement reads every node's ID, state and availability.
        return Allowed(path + _query(params, {"filters": _filters}), m["version"] or "")
    if method == "GET" and (m := _route(r"/services", path)):
        if OWNER_LABEL not in _filter_values(params, "label"):
            raise Refused(f"list services with filters={{'label': [{OWNER_LABEL!r}]}} only")
        return Allowed(path + _query(params, {"filters": _filters}), m["version"] or "")
    if method == "GET" and (m := _route(r"/tasks", path)):
        services = _filter_values(params, "service")
        prefix = container_name_prefix(policy.network)
        if not services or not all(name.startswith(prefix) for name in services):
            raise Refused(f"list tasks of user services only (filters service={prefix}*)")
        return Allowed(path + _query(params, {"filters": _filters}), m["version"] or "")
    if method == "POST" and (m := _route(r"/services/create", path)):
        spec = parse_json(body)
        check_service_create(policy, spec)
        claim = service_gpu_claim(spec)
        return Allowed(
            path + _query(params, {}), m["version"] or "", body=_dumps(spec), gpu_claim=claim,
            registry_auth=policy.registry_auth,
        )  # fmt: skip
    if method in ("GET", "DELETE") and (m := _route(rf"/services/(?P<id>{_NAME})", path)):
        queries: dict[str, Accepts | None] = {"insertDefaults": _BOOL} if method == "GET" else {}
        return Allowed(path + _query(params, queries), m["version"] or "", m["id"], b"", "service")
    if method == "GET" and (
        m := _route(rf"/images/(?P<image>{_IMAGE}|{_DIGEST_IMAGE})/json", path)
    ):
        if m["image"] not in policy.allowed_images:
            raise Refused(f"image {m['image']!r} is not an allowed workspace image")
        return Allowed(path + _query(params, {}), m["version"] or "")
    return _match_user_network_route(policy, method, path, params, body)


def _match_user_network_route(
    policy: Policy, method: str, path: str, params: dict[str, str], body: bytes
) -> Allowed | None:
    """A user's own network: create it as LabSwarmSpawner does, inspect it, connect a
    frontend container to it, and (a deleted user's) disconnect a frontend and remove it.
    The relay checks the owner label of the network named."""
    if method == "POST" and (m := _route(r"/networks/create", path)):
        spec = parse_json(body)
        check_user_network_create(policy, spec)
        return Allowed(path + _query(params, {}), m["version"] or "", body=_dumps(spec))
    one = _route(rf"/networks/(?P<name>{_NAME})(?P<action>/connect|/disconnect)?", path)
    actions = (("GET", None), ("POST", "/connect"), ("POST", "/disconnect"), ("DELETE", None))
    if one is None or (method, one["action"]) not in actions:
        return None
    if not one["name"].startswith(prefix := user_network_prefix(policy.network)):
        raise Refused(f"network {one['name']!r} is not a user's network ({prefix}*)")
    version = one["version"] or ""
    if method == "GET":
        queries: dict[str, Accepts | None] = {"verbose": _BOOL}
        return Allowed(path + _query(params, queries), version, one["name"], b"", "network")
    if method == "DELETE":
        return Allowed(path + _query(params, {}), version, one["name"], b"", "network")
    if one["action"] == "/disconnect":
        return _frontend_disconnect(policy, path + _query(params, {}), version, one["name"], body)
    connect = _keys("connect", parse_json(body), ("Container", "EndpointConfig"))
    container = _frontend(policy, connect.get("container"), "join")
    if connect.get("endpointconfig"):
        raise Refused("EndpointConfig must be empty (no fixed address, aliases or links)")
    checked = {"Container": container}
    return Allowed(path + _query(params, {}), version, one["name"], _dumps(checked), "network")


def _frontend(policy: Policy, container: object, verb: str) -> str:
    """`container` if it is one of the frontends, the only containers that join or leave a
    user's network."""
    if not isinstance(container, str) or container not in policy.frontend_containers:
        raise Refused(
            f"only the frontends ({', '.join(sorted(policy.frontend_containers))}) {verb} a "
            f"user's network, not {container!r}"
        )
    return container


def _frontend_disconnect(
    policy: Policy, target: str, version: str, network: str, body: bytes
) -> Allowed:
    """A frontend leaves a deleted user's network (LabSwarmSpawner.delete_forever), not
    forced: no one else's endpoint is cut off it, and a user's task is never touched."""
    disconnect = _keys("disconnect", parse_json(body), ("Container", "Force"))
    container = _frontend(policy, disconnect.get("container"), "leave")
    if disconnect.get("force") not in (None, False):
        raise Refused("Force must be false (a frontend leaves a network as itself)")
    checked = {"Container": container}
    return Allowed(target, version, network, _dumps(checked), "network")


def check_user_network_create(policy: Policy, spec: dict[str, Any]) -> None:
    """The user's own network as LabSwarmSpawner makes it: named for the user in its owner
    label, overlay, attachable, internal, no driver options or address plan."""
    network = _keys(
        "network",
        spec,
        ("Name", "Driver", "Options", "IPAM", "CheckDuplicate", "Labels", "Internal", "Attachable"),
    )
    labels = network.get("labels")
    if not isinstance(labels, dict) or list(labels) != [OWNER_LABEL]:
        raise Refused(f"a user's network carries exactly the {OWNER_LABEL} label")
    user = labels[OWNER_LABEL]
    if not isinstance(user, str) or network.get("name") != user_network_name(user, policy.network):
        raise Refused(
            f"network {network.get('name')!r} is not the network of its owner {user!r} "
            f"({user_network_name(str(user), policy.network)!r})"
        )
    # CheckDuplicate: the engine allows two networks of one name without it.
    expected = {"driver": "overlay", "attachable": True, "internal": True, "checkduplicate": True}
    for key, value in expected.items():
        if type(got := network.get(key)) is not type(value) or got != value:
            raise Refused(f"a user's network is {expected}, not {key}={got!r}")
    for key in ("options", "ipam"):
        if network.get(key):
            raise Refused(f"a user's network takes no {key} (driver options, address plans)")


def _filter_values(params: dict[str, str], key: str) -> list[str]:
    """The values of one key of `filters=` (docker-py sends lists; Docker also takes
    {value: true} maps)."""
    raw = params.get("filters") or "{}"
    if not _filters(raw):
        raise Refused(f"filters={raw!r} is not a short JSON object")
    values = json.loads(raw).get(key) or []
    return [str(v) for v in (values if isinstance(values, list) else values.keys())]


def check_service_create(policy: Policy, spec: dict[str, Any]) -> None:
    """The service LabSwarmSpawner creates (labhub.swarmspawner.service_spec), nothing more."""
    service = _keys("service", spec, ("Name", "Labels", "TaskTemplate", "EndpointSpec"))
    name = service.get("name")
    prefix = container_name_prefix(policy.network)
    if not isinstance(name, str) or not re.fullmatch(_NAME, name) or not name.startswith(prefix):
        raise Refused(f"service name {name!r} must start with {prefix!r}")
    _labels(policy, service.get("labels"))
    endpoint = _keys("EndpointSpec", service.get("endpointspec"), ("Mode",))
    if endpoint.get("mode") != "dnsrr":
        raise Refused("EndpointSpec must be {Mode: dnsrr}: no routing mesh, no published ports")
    task = _keys(
        "TaskTemplate",
        service.get("tasktemplate"),
        ("ContainerSpec", "Resources", "Placement", "Networks"),
    )
    for required in ("containerspec", "resources", "placement", "networks"):
        if required not in task:
            raise Refused(f"TaskTemplate: {required} is required")
    _check_container_spec(policy, task["containerspec"])
    _check_service_resources(policy, task["resources"])
    placement = _keys("Placement", task["placement"], ("Constraints",))
    constraints = _strings("Constraints", placement.get("constraints"), 1)
    if len(constraints) != 1 or not re.fullmatch(r"node\.id==[A-Za-z0-9]{1,64}", constraints[0]):
        raise Refused(f"Placement: exactly one node.id==<node> constraint, not {constraints!r}")
    _check_service_network(policy, service, task)
    _check_service_owner(policy, name, service["labels"][OWNER_LABEL])
    _check_service_home(policy, service["labels"][OWNER_LABEL], task["containerspec"])


def _check_service_owner(policy: Policy, name: str, owner: str) -> None:
    """A service is named for its owner: their default server (DockerSpawner's
    `<prefix>-<user>`) or one of their named servers (`<prefix>-<user>--<server>`)."""
    own = user_server_name(owner, policy.network)
    if name != own and not re.fullmatch(re.escape(own) + r"--[a-z0-9-]{1,200}", name):
        raise Refused(
            f"service {name!r} is not a server of its owner {owner!r} ({own}[--<server>])"
        )


def _check_service_home(policy: Policy, owner: str, container: Any) -> None:
    """Every server of a user (named servers too) mounts that user's one home volume and
    nobody else's; datasets are checked by `_check_service_mount`."""
    home = volume_name_for(owner, policy.network)
    for mount in _folded(container).get("mounts") or []:
        kind, source, target = (_folded(mount).get(key) for key in ("type", "source", "target"))
        dataset = f"{source}:{target}:ro" in policy.dataset_binds
        if kind == "volume" and not dataset and source != home:
            raise Refused(f"a service of {owner!r} mounts only its own home {home}")


def _check_service_network(policy: Policy, service: dict[str, Any], task: dict[str, Any]) -> None:
    """The service joins its owner's network and nothing else; the task has the same owner."""
    owner = service["labels"][OWNER_LABEL]
    task_owner = _folded(task["containerspec"])["labels"].get(OWNER_LABEL)
    if task_owner != owner:
        raise Refused(f"the task's owner {task_owner!r} is not the service's ({owner!r})")
    networks, own = task["networks"], user_network_name(owner, policy.network)
    if networks != [{"Target": own}]:
        raise Refused(f"Networks={networks!r}: only its owner's network [{{Target: {own!r}}}]")


_CONTAINER_SPEC_KEYS = (
    "Image",
    "Command",
    "Args",
    "Env",
    "User",
    "Labels",
    "Mounts",
    "CapabilityDrop",
    "Init",
    "Hosts",
)


def _check_container_spec(policy: Policy, value: Any) -> None:
    spec = _keys("ContainerSpec", value, _CONTAINER_SPEC_KEYS)
    for required in ("image", "user", "labels", "capabilitydrop"):
        if required not in spec:
            raise Refused(f"ContainerSpec: {required} is required")
    _image(policy, spec["image"])
    _user(policy, spec["user"])
    _labels(policy, spec["labels"])
    if spec.get("command") is not None:
        raise Refused("Command must be null: the image's entry point runs Args")
    _null_or(_strings)("Args", spec.get("args"))
    _null_or(_strings)("Env", spec.get("env"))
    if [str(c).upper() for c in _strings("CapabilityDrop", spec["capabilitydrop"])] != ["ALL"]:
        raise Refused("services must drop all capabilities (CapabilityDrop: [ALL])")
    if "init" in spec and _bool("Init", spec["init"]):
        raise Refused("Init must be false (tini is the image's entry point)")
    _check_hosts(policy, spec.get("hosts"))
    mounts = spec.get("mounts") or []
    if not isinstance(mounts, list) or len(mounts) > 2 + len(policy.dataset_binds):
        raise Refused("Mounts: the user's volume, /dev/shm and the declared datasets only")
    for mount in mounts:
        _check_service_mount(policy, mount)


def _check_hosts(policy: Policy, value: Any) -> None:
    """Hosts ("ADDRESS NAME" lines of the server's /etc/hosts): only configurable-http-
    proxy's names (chp_host_names), each once, at an IPv4 address. The address is the
    hub's word (it could as well set the server's HTTP_PROXY): a name such as pypi.org
    pointed at another server is what is refused."""
    names = []
    for entry in _null_or(_strings)("Hosts", value) or []:
        address, _, name = entry.partition(" ")
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise Refused(f"Hosts entry {entry!r} is not 'IPv4-ADDRESS NAME'") from None
        if name not in policy.chp_host_names:
            allowed = ", ".join(sorted(policy.chp_host_names)) or "none (SUBDOMAINS is off)"
            raise Refused(f"Hosts entry {entry!r}: the only names allowed are {allowed}")
        names.append(name)
    if len(names) != len(set(names)):
        raise Refused(f"Hosts={value!r} names a host twice")


def _check_service_mount(policy: Policy, value: Any) -> None:
    """The user's named volume (no volume options: they can bind a host path; with HOME_NFS
    exactly its NFS home's) or a sized tmpfs at /dev/shm; never a bind."""
    mount = _keys(
        "Mounts[]", value, ("Target", "Source", "Type", "ReadOnly", "TmpfsOptions", "VolumeOptions")
    )
    target = mount.get("target")
    if not isinstance(target, str) or not re.fullmatch(r"/[A-Za-z0-9_./-]*", target):
        raise Refused(f"mount target {target!r} is not a plain absolute path")
    if "readonly" in mount:
        _bool("ReadOnly", mount["readonly"])
    kind, source = mount.get("type"), mount.get("source")
    if f"{source}:{target}:ro" in policy.dataset_binds:
        # A declared dataset (labhub.datasets), read-only, as `Dataset.bind` says.
        if kind != mount_type(str(source)):
            raise Refused(f"dataset {source!r} is mounted as a {kind}, not as declared")
        if mount.get("readonly") is not True or set(mount) - {
            "target",
            "source",
            "type",
            "readonly",
        }:
            raise Refused(f"dataset {source!r} is mounted read-only (ReadOnly: true), no options")
        return
    if kind == "volume":
        prefix = volume_prefix(policy.network)
        if not isinstance(source, str) or not re.fullmatch(_NAME, source):
            raise Refused(f"volume mount source {source!r} is not a plain volume name")
        if not source.startswith(prefix) or "tmpfsoptions" in mount:
            raise Refused(f"volume {source!r} is not a user volume ({prefix}*)")
        _check_home_volume_options(policy, source, mount.get("volumeoptions"))
        return
    if kind == "tmpfs" and target == "/dev/shm" and source in (None, ""):
        options = _keys("TmpfsOptions", mount.get("tmpfsoptions"), ("SizeBytes",))
        _int_in("TmpfsOptions.SizeBytes", options.get("sizebytes"), 1, policy.max_shm)
        return
    raise Refused(
        f"mount {kind}:{source}->{target} is not allowed: the user's volume, a tmpfs at "
        "/dev/shm and the declared datasets (read-only); no binds besides"
    )


def _check_home_volume_options(policy: Policy, volume: str, options: Any) -> None:
    """No VolumeOptions on a home: the local driver's options can bind any host path
    (type=none, o=bind, device=/) or mount any server. With HOME_NFS, exactly this
    volume's NFS home (`labhub.contract.nfs_home_options`); with QUOTA_ROOT, exactly its
    bind onto its own subvolume there (`labhub.contract.quota_home_options`); never else."""
    home = swarm_home_options(policy.home_nfs, policy.quota_root, volume)
    if not home:
        if options is not None:
            raise Refused(
                f"VolumeOptions on {volume!r} are not allowed: a home is a plain volume "
                "(driver options can bind a host path)"
            )
        return
    wanted = {"DriverConfig": {"Name": "local", "Options": home}}
    if options != wanted:
        kind = "NFS home (HOME_NFS)" if policy.home_nfs else "disk-quota home (QUOTA_ROOT)"
        raise Refused(
            f"VolumeOptions of {volume!r} must be exactly its {kind} {wanted}, not {options!r}"
        )


def _check_service_resources(policy: Policy, value: Any) -> None:
    """Memory, CPU and process limits, all three, within bounds; no reservations of
    generic resources (GPUs come through the allocator, not yet in Swarm mode)."""
    resources = _keys("Resources", value, ("Limits",))
    limits = _keys("Resources.Limits", resources.get("limits"), ("NanoCPUs", "MemoryBytes", "Pids"))
    for required in ("nanocpus", "memorybytes", "pids"):
        if required not in limits:
            raise Refused(f"Resources.Limits: {required} is required")
    _int_in("MemoryBytes", limits["memorybytes"], 1, policy.max_memory)
    _int_in("NanoCPUs", limits["nanocpus"], 1, policy.max_cpus * 10**9)
    _int_in("Pids", limits["pids"], 1, policy.max_pids)


# --- Swarm mode: GPUs (labhub.swarmgpu) ---------------------------------------------------
# Engine 20.10's service API has no device requests: the nodes run NVIDIA's runtime, which
# gives a task the devices its NVIDIA_VISIBLE_DEVICES names (an image's own value, `all` in
# CUDA images, unless the service sets it). So every service sets it, to `void` or to
# exactly the devices the allocator booked for its holder on the node it is pinned to.
_NVIDIA_DEVICES_DIR = "/var/run/nvidia-container-devices"  # the runtime's mount-based choice
_DEVICE_ID = r"[0-9]{1,3}(?::[0-9]{1,3})?"
_DEVICE_KEY = re.compile(rf"(?P<id>{_DEVICE_ID})@(?P<node>[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}})")


@dataclass(frozen=True)
class GpuClaim:
    """What a GPU service asks for: its holder's booked devices (`0@gpu-a`, one node) and
    the node ID it is pinned to. The relay verifies it with `check_gpu_claim`."""

    holder: str
    devices: tuple[str, ...]
    node: str
    node_id: str


def service_gpu_claim(spec: dict[str, Any]) -> GpuClaim | None:
    """The service's GPU claim (None: no GPU), from an already checked create body.

    Refuses an NVIDIA_VISIBLE_DEVICES that is missing, given twice, `all`/`none` or not the
    devices its labels book, any other NVIDIA_* variable, a mount at the runtime's
    device-list directory, and a holder that is not the service's owner.
    """
    service = _folded(spec)
    labels: dict[str, str] = service["labels"]
    container = _folded(_folded(service["tasktemplate"])["containerspec"])
    for mount in container.get("mounts") or []:
        target = str(_folded(mount).get("target"))
        if target.rstrip("/") == _NVIDIA_DEVICES_DIR or target.startswith(_NVIDIA_DEVICES_DIR):
            raise Refused(f"mount target {target!r} would choose GPUs past the allocator")
    nvidia = [e for e in container.get("env") or [] if e.upper().startswith("NVIDIA_")]
    if len(nvidia) != 1 or not nvidia[0].startswith(f"{VISIBLE_DEVICES_ENV}="):
        raise Refused(
            f"Env {nvidia!r}: exactly one {VISIBLE_DEVICES_ENV}=<booked devices or void> and no "
            "other NVIDIA_* variable (the nodes' NVIDIA runtime reads them; an image may say all)"
        )
    value = nvidia[0].partition("=")[2]
    holder, booked = labels.get(GPU_HOLDER_LABEL), labels.get(GPU_DEVICES_LABEL)
    if value == "void":
        if holder is not None or booked is not None:
            raise Refused(f"GPU labels on a service whose {VISIBLE_DEVICES_ENV} is void")
        return None
    ids = value.split(",")
    if not all(re.fullmatch(_DEVICE_ID, i) for i in ids):
        raise Refused(
            f"{VISIBLE_DEVICES_ENV}={value!r}: only device ids the allocator booked "
            "(never all, none or a UUID)"
        )
    keys = (booked or "").split(",")
    found = [_DEVICE_KEY.fullmatch(key) for key in keys]
    nodes = {match["node"] for match in found if match}
    if not holder or not all(found) or len(nodes) != 1:
        raise Refused(
            f"a GPU service needs the {GPU_HOLDER_LABEL} label and {GPU_DEVICES_LABEL} naming "
            f"its devices on one node (<id>@<node>), not {booked!r}"
        )
    if [match["id"] for match in found if match] != ids:
        raise Refused(f"{VISIBLE_DEVICES_ENV}={value!r} is not the booked {booked!r}")
    if holder.partition("/")[0] != labels[OWNER_LABEL]:
        raise Refused(f"GPU holder {holder!r} is not the service's owner {labels[OWNER_LABEL]!r}")
    constraints = _folded(_folded(service["tasktemplate"])["placement"])["constraints"]
    return GpuClaim(holder, tuple(keys), nodes.pop(), constraints[0].partition("==")[2])


def check_gpu_claim(
    claim: GpuClaim, booked: tuple[str, ...] | None, nodes: list[dict[str, Any]]
) -> None:
    """Refuse unless the GPU record books exactly these devices for the holder and the
    service is pinned to the node they are on (`nodes`: the manager's `GET /nodes`)."""
    if booked is None or sorted(booked) != sorted(claim.devices):
        raise Refused(
            f"{claim.holder} asks for {', '.join(claim.devices)} but the GPU record books "
            f"{', '.join(booked) if booked else 'nothing'} for it"
        )
    named = [
        str(node.get("ID"))
        for node in nodes
        if claim.node in (node.get("ID"), (node.get("Description") or {}).get("Hostname"))
    ]
    if named != [claim.node_id]:
        where = ", ".join(named) or "not in the swarm"
        raise Refused(
            f"{claim.holder}'s GPUs are on node {claim.node} ({where}), but the service is "
            f"pinned to {claim.node_id}"
        )


# --- The proxy in front of each node's engine (labhub.homemove) -------------------------
def check_node_request(policy: Policy, method: str, target: str, body: bytes) -> Allowed:
    """A request to one node's engine, checked: users' volumes (create, inspect, remove)
    and a never-started copy helper on one user's volume (labhub.hometar.copy_helper):
    create it, read its home as a tar, put a checked tar back (streamed: `tar_upload`),
    remove it. No start, exec or attach: nothing runs. And requests that are not the
    engine's: a user volume's disk-quota home with its limit (`quota_home`), which the
    relay passes to the node's diskquota service, and its removal (`quota_home_removal`),
    passed on once the engine has no volume of that name; the usage of the node's homes
    of this stack (`quota_usage_of`, exactly `GET QUOTA_USAGE_ROUTE`), which it reads
    there; and its node's GPUs' utilisation and devices (`nvidia_smi`, exactly `GET
    NODE_UTILISATION_ROUTE` or `GET NODE_DEVICES_ROUTE`), which it reads with nvidia-smi."""
    return _checked(_match_node_route, "a node's home moves", policy, method, target, body)


def _match_node_route(
    policy: Policy, method: str, path: str, params: dict[str, str], body: bytes
) -> Allowed | None:
    if method == "GET" and (m := _route(r"/(?:_ping|version|info)", path)):
        return Allowed(path + _query(params, {}), m["version"] or "")
    if method == "POST" and (m := _route(r"/volumes/create", path)):
        volume = parse_json(body)
        check_volume_create(
            Policy(frozenset(), policy.network, quota_root=policy.quota_root), volume
        )
        return Allowed(path + _query(params, {}), m["version"] or "", body=_dumps(volume))
    if method in ("GET", "DELETE") and (m := _route(rf"/volumes/(?P<name>{_NAME})", path)):
        if not m["name"].startswith(prefix := volume_prefix(policy.network)):
            raise Refused(f"volume {m['name']!r} is not a user volume ({prefix}*)")
        return Allowed(path + _query(params, {}), m["version"] or "")
    quota_home = re.fullmatch(rf"{re.escape(QUOTA_HOME_ROUTE)}({_NAME})", path)
    if method in ("POST", "DELETE") and quota_home:
        home = quota_home[1]
        if not home.startswith(prefix := volume_prefix(policy.network)):
            raise Refused(f"volume {home!r} is not a user volume ({prefix}*)")
        if method == "DELETE":
            return Allowed(path + _query(params, {}), quota_home_removal=home)
        limit = _keys("quota home", parse_json(body), ("Limit",)).get("limit")
        # DISK_QUOTA_MAX is the diskquota service's to enforce; here: a size in bytes.
        return Allowed(
            path + _query(params, {}), quota_home=(home, _int_in("Limit", limit, 1, 2**62))
        )
    if method == "GET" and path == QUOTA_USAGE_ROUTE:
        return Allowed(path + _query(params, {}), quota_usage_of=volume_prefix(policy.network))
    if method == "GET" and path in (NODE_UTILISATION_ROUTE, NODE_DEVICES_ROUTE):
        return Allowed(path + _query(params, {}), nvidia_smi=path)
    helper = re.escape(copy_helper_prefix(policy.network)) + "[0-9a-f]{16}"
    if method == "POST" and (m := _route(r"/containers/create", path)):
        name = params.get("name", "")
        if not re.fullmatch(helper, name):
            raise Refused(f"container name {name!r}: only copy helpers ({helper})")
        spec = parse_json(body)
        owner = (spec.get("Labels") or {}).get(OWNER_LABEL)
        image = spec.get("Image")
        if not isinstance(owner, str) or not owner or image not in policy.allowed_images:
            raise Refused("a copy helper names its user (label) and an allowed image")
        if spec != copy_helper(policy.network, owner, str(image)):
            raise Refused("only the copy helper of labhub.hometar.copy_helper, exactly")
        return Allowed(path + _query(params, {"name": None}), m["version"] or "", body=_dumps(spec))
    one = _route(rf"/containers/(?P<id>{helper})(?P<action>/archive)?", path)
    if one is None:
        return None
    if method == "GET" and one["action"]:
        home = re.compile(re.escape(HOME_DIR)).fullmatch
        return Allowed(path + _query(params, {"path": home}), one["version"] or "", one["id"])
    if method == "PUT" and one["action"]:
        parent = re.compile(re.escape(PARENT)).fullmatch
        queries: dict[str, Accepts | None] = {"path": parent, "noOverwriteDirNonDir": _BOOL}
        target = path + _query(params, queries)
        return Allowed(target, one["version"] or "", one["id"], tar_upload=True)
    if method == "DELETE" and not one["action"]:
        false = re.compile("0|false|False").fullmatch
        queries = {"v": false, "link": false, "force": _BOOL}
        return Allowed(path + _query(params, queries), one["version"] or "", one["id"])
    return None
