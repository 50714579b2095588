"""A student's container attacks the platform, end to end on the real stack.

Code runs in the student's own kernel (`Stack.run`), exactly as a student's notebook
would. Every attempt below must fail: reaching the Docker API, reading the hub's
database or secrets, opening another student's server without their token, becoming
root. Then one student's container misbehaves (fork bomb, memory hog, disk filler)
while the test checks, during and after, that the hub and another student's server
keep answering. Every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import docker
import pytest
import requests
from stacks import STACK, USERS_CREATED, VERSION, Stack

from testsupport.containers import user_container
from testsupport.hubclient import HubClient

pytestmark = pytest.mark.e2e


@dataclass
class Pair:
    """Two students with running servers: alice attacks, bob is the bystander."""

    alice: str
    bob: str
    alice_client: HubClient
    bob_client: HubClient
    bob_token: str
    bob_marker: str


@dataclass
class Watch:
    """What the bystander checks saw while something ran in alice's container."""

    polls: int = 0
    failures: list[str] = field(default_factory=list)


def forget(clients: dict[str, HubClient]) -> None:
    """Stop these users' servers and remove their volumes now, not at the end of the
    session: the memory goes back to the tests that follow."""
    from labhub.contract import volume_name_for

    api = docker.from_env()
    for name, client in clients.items():
        with contextlib.suppress(Exception):
            client.stop_server(name)
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            api.volumes.get(volume_name_for(name, STACK)).remove(force=True)


@pytest.fixture(scope="module")
def pair(stack: Stack) -> Iterator[Pair]:
    suffix = uuid.uuid4().hex[:6]
    alice, bob = f"sec-alice-{suffix}", f"sec-bob-{suffix}"
    USERS_CREATED.extend([alice, bob])
    alice_client, bob_client = stack.login(alice), stack.login(bob)
    alice_client.start_server(alice)
    bob_client.start_server(bob)
    marker = f"BOB-ONLY-{uuid.uuid4().hex}"
    stack.run(bob_client, bob, f"open('/home/jovyan/bob-secret.txt', 'w').write({marker!r})")
    yield Pair(alice, bob, alice_client, bob_client, bob_client.new_token(bob), marker)
    forget({alice: alice_client, bob: bob_client})


def in_alice(stack: Stack, pair: Pair, code: str) -> Any:
    """Run code in alice's kernel; it prints one JSON document, which is returned."""
    return json.loads(stack.run(pair.alice_client, pair.alice, code).strip().splitlines()[-1])


def bystanders_serving(stack: Stack, pair: Pair) -> list[str]:
    """Empty if the hub (through nginx) and bob's server both answer 200 now."""
    session = requests.Session()
    session.trust_env = False
    session.verify = stack.ca_file
    problems = []
    checks = [
        ("hub", stack.base_url + "/hub/health", {}),
        (
            "bob",
            stack.base_url + f"/user/{pair.bob}/api/status",
            {"Authorization": f"token {pair.bob_token}"},
        ),
    ]
    for name, url, headers in checks:
        try:
            response = session.get(url, headers=headers, timeout=10)
            if response.status_code != 200:
                problems.append(f"{name}: HTTP {response.status_code}")
        except requests.RequestException as error:
            problems.append(f"{name}: {error}")
    return problems


def while_watching(
    stack: Stack, pair: Pair, attack: Callable[[], Any], timeout: float = 240
) -> tuple[Any, Watch]:
    """Run `attack` in a thread; poll the bystanders about once a second until it ends."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = attack()
        except BaseException as error:  # re-raised in the test's thread below
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    watch = Watch()
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        watch.failures += bystanders_serving(stack, pair)
        watch.polls += 1
        time.sleep(1)
    thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not thread.is_alive(), f"the attack did not end within {timeout} s"
    if "error" in result:
        raise result["error"]
    # And after: everything still answers.
    watch.failures += bystanders_serving(stack, pair)
    return result.get("value"), watch


# --- The Docker API ---------------------------------------------------------------


def test_no_docker_socket_or_docker_host_in_the_container(stack: Stack, pair: Pair) -> None:
    seen = in_alice(
        stack,
        pair,
        """
import json, os
paths = ["/var/run/docker.sock", "/run/docker.sock", "/var/run/docker", "/run/containerd"]
print(json.dumps({"paths": [p for p in paths if os.path.exists(p)],
                  "env": sorted(k for k in os.environ if k.startswith("DOCKER"))}))
""",
    )
    assert seen == {"paths": [], "env": []}


def test_docker_proxy_does_not_resolve_from_a_user_container(stack: Stack, pair: Pair) -> None:
    names = ["docker-proxy", f"{STACK}-docker-proxy-1", f"{STACK}_docker-proxy_1"]
    seen = in_alice(
        stack,
        pair,
        f"""
import json, socket
result = {{}}
for name in {names!r}:
    try:
        result[name] = socket.gethostbyname(name)
    except OSError as error:
        result[name] = "unresolved"
# Control: the hub itself resolves, so name resolution works.
result["hub"] = socket.gethostbyname("hub")
print(json.dumps(result))
""",
    )
    assert all(seen[name] == "unresolved" for name in names), seen
    assert seen["hub"] != "unresolved"


def test_without_gpus_the_hub_asks_the_engine_for_no_device(stack: Stack) -> None:
    """GPU_INVENTORY=none (the default): the hub's container sees no GPU at all
    (compose/gpu-hub.yml is for GPU hosts only, tests/test_gpus.py)."""
    hub = docker.from_env().containers.get(f"{STACK}-hub-1")
    assert not hub.attrs["HostConfig"].get("DeviceRequests"), hub.attrs["HostConfig"]


def test_no_docker_api_port_answers_on_any_address_around_the_hub(stack: Stack, pair: Pair) -> None:
    """Scan (bounded) port 2375/2376 on the hub's /24, the proxy's and hub's own addresses."""
    api = docker.from_env()
    proxy = api.containers.get(f"{STACK}-docker-proxy-1")
    hub = api.containers.get(f"{STACK}-hub-1")
    proxy_ips = [n["IPAddress"] for n in proxy.attrs["NetworkSettings"]["Networks"].values()]
    hub_ips = [n["IPAddress"] for n in hub.attrs["NetworkSettings"]["Networks"].values()]
    hub_on_users_net = hub.attrs["NetworkSettings"]["Networks"][STACK]["IPAddress"]
    # (The network's IPAM config names no gateway when the subnet is set: ask the endpoint.)
    gateway = hub.attrs["NetworkSettings"]["Networks"][STACK]["Gateway"]
    neighbourhood = ipaddress.ip_network(f"{hub_on_users_net}/24", strict=False)
    targets = sorted({*map(str, neighbourhood.hosts()), *proxy_ips, *hub_ips, gateway})
    assert len(targets) <= 300
    seen = in_alice(
        stack,
        pair,
        f"""
import json, socket, time
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return f"{{host}}:{{port}}"
    except OSError:
        return None
targets = [(h, p) for h in {targets!r} for p in (2375, 2376)]
# Control: the hub's API port, which user servers must reach, shows up as open.
targets.append(({hub_on_users_net!r}, 8081))
start = time.monotonic()
with ThreadPoolExecutor(max_workers=64) as pool:
    open_ports = [t for t in pool.map(probe, targets) if t]
print(json.dumps({{"scanned": len(targets), "open": open_ports,
                  "seconds": round(time.monotonic() - start, 1)}}))
""",
    )
    assert seen["scanned"] == 2 * len(targets) + 1
    assert seen["open"] == [f"{hub_on_users_net}:8081"], seen
    assert seen["seconds"] < 60


# --- The hub's database and secrets -----------------------------------------------

PROBE_HUB = """
import json, os, urllib.request, urllib.error
def status(url, token=None):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:
        return repr(error)
own = os.environ["JUPYTERHUB_API_TOKEN"]
print(json.dumps({
    "files": [p for p in ("/srv/jupyterhub", "/srv/jupyterhub/jupyterhub.sqlite",
                          "/srv/jupyterhub/jupyterhub_cookie_secret", "/srv/labhub")
              if os.path.exists(p)],
    "mounts": open("/proc/self/mounts").read(),
    "users_anonymous": status("http://hub:8081/hub/api/users"),
    "users_bad_token": status("http://hub:8081/hub/api/users", "0" * 32),
    "users_server_token": status("http://hub:8081/hub/api/users", own),
    "admin_page": status("http://hub:8081/hub/admin", own),
    "chp_routes_anonymous": status("http://proxy-chp:8001/api/routes"),
    "chp_routes_server_token": status("http://proxy-chp:8001/api/routes", own),
    "env": dict(os.environ),
}))
"""


def test_hub_database_and_secrets_are_out_of_reach(stack: Stack, pair: Pair) -> None:
    seen = in_alice(stack, pair, PROBE_HUB)
    assert seen["files"] == [], "the hub's data is visible in a user container"
    assert "/srv/jupyterhub" not in seen["mounts"]
    assert seen["users_anonymous"] == 403
    assert seen["users_bad_token"] == 403
    # The server's own token is scoped to its user: listing users is refused.
    assert seen["users_server_token"] == 403
    # configurable-http-proxy's API (routing table): netguard drops the connection
    # (tests/test_isolation.py); behind that, it would still want its own secret token.
    assert "timed out" in str(seen["chp_routes_anonymous"]), seen["chp_routes_anonymous"]
    assert "timed out" in str(seen["chp_routes_server_token"]), seen["chp_routes_server_token"]
    secrets = [
        stack.value(name)
        for name in ("CONFIGPROXY_AUTH_TOKEN", "ADMIN_INITIAL_PASSWORD", "SIGNUP_CODE")
    ]
    hub = docker.from_env().containers.get(f"{STACK}-hub-1")
    cookie_secret = hub.exec_run(["cat", "/srv/jupyterhub/jupyterhub_cookie_secret"]).output
    secrets.append(cookie_secret.decode().strip())
    # No GPU grant, no GPU: the toolkit would expose none even if it honoured the env.
    assert seen["env"].get("NVIDIA_VISIBLE_DEVICES") == "void"
    environment = json.dumps(seen["env"])
    for secret in secrets:
        assert secret and secret not in environment


# --- Another student's server -------------------------------------------------------

PROBE_OTHER = """
import json, os, urllib.request, urllib.error
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
opener = urllib.request.build_opener(NoRedirect)
def fetch(url, token=None, method="GET"):
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        response = opener.open(request, timeout=15)
        status, body = response.status, response.read(1000000).decode("latin-1")
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read(1000000).decode("latin-1")
    except OSError as error:
        return [repr(error), False, ""]
    # Keep the output small: the status, whether bob's secret leaked, a short excerpt.
    return [status, MARKER in body, body[:200]]
own = os.environ["JUPYTERHUB_API_TOKEN"]
out = {}
for base in BASES:
    for path in ("api/contents/bob-secret.txt", "files/bob-secret.txt", "lab", "api/kernels",
                 "api/terminals"):
        for token in (None, own):
            key = f"GET {base}{path} {'own-token' if token else 'anonymous'}"
            out[key] = fetch(base + path, token)
    out[f"POST {base}api/kernels own-token"] = fetch(base + "api/kernels", own, "POST")
print(json.dumps(out))
"""


def test_another_students_server_refuses_without_their_token(stack: Stack, pair: Pair) -> None:
    # Through configurable-http-proxy's public side, the one way to bob's server that
    # netguard leaves open (straight to bob's container is dropped: test_isolation.py).
    bases = [f"http://proxy-chp:8000/user/{pair.bob}/"]
    code = PROBE_OTHER.replace("BASES", repr(bases)).replace("MARKER", repr(pair.bob_marker))
    seen = in_alice(stack, pair, code)
    assert len(seen) == 5 * 2 + 1
    for attempt, (status, leaked, excerpt) in seen.items():
        # The proxy answers alice (an HTTP answer); bob's server says no.
        assert isinstance(status, int), (attempt, status)
        assert status in (302, 401, 403), (attempt, status, excerpt)
        assert not leaked, attempt
    # Bob, with his token, does read it: the file was there to be stolen.
    response = pair.bob_client.session.get(
        stack.base_url + f"/user/{pair.bob}/api/contents/bob-secret.txt",
        headers={"Authorization": f"token {pair.bob_token}"},
        timeout=30,
    )
    assert response.status_code == 200 and pair.bob_marker in response.text


# --- Root ---------------------------------------------------------------------------

PROBE_ROOT = """
import json, os, shutil, stat, subprocess
out = {"ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()]}
for name, call in (("setuid", lambda: os.setuid(0)), ("setgid", lambda: os.setgid(0)),
                   ("setgroups", lambda: os.setgroups([0])),
                   ("unshare_user", lambda: os.unshare(os.CLONE_NEWUSER))):
    try:
        call()
        out[name] = "succeeded"
    except (OSError, AttributeError) as error:
        out[name] = type(error).__name__
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
for key in ("NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "Seccomp"):
    out[key] = status[key].strip()
out["sudo"] = shutil.which("sudo")
setuid = []
for root in ("/usr", "/bin", "/sbin", "/opt", "/etc"):
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                setuid.append(path)
out["setuid_binaries"] = sorted(setuid)
def run(*cmd):
    if not shutil.which(cmd[0]):
        return None
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
    return [p.returncode, (p.stdout + p.stderr)[-300:]]
out["su"] = run("su", "root", "-c", "id -u")
out["mount"] = run("mount", "-t", "tmpfs", "none", "/tmp")
out["unshare"] = run("unshare", "-r", "id", "-u")
# Each setuid binary, run: still our uid (no-new-privileges ignores the bit).
out["setuid_runs"] = {}
for path in setuid[:20]:
    p = subprocess.Popen([path, "--help"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        uids = next((l.split()[1:3] for l in open(f"/proc/{p.pid}/status")
                     if l.startswith("Uid:")), None)
    except OSError:
        uids = "exited"
    p.kill(); p.wait(timeout=10)
    out["setuid_runs"][path] = uids
print(json.dumps(out))
"""


def test_no_way_to_root(stack: Stack, pair: Pair) -> None:
    seen = in_alice(stack, pair, PROBE_ROOT)
    assert seen["ids"] == [1000, 1000, 100, 100]
    for call in ("setuid", "setgid", "setgroups", "unshare_user"):
        assert seen[call] in ("PermissionError", "OSError"), (call, seen[call])
    assert seen["NoNewPrivs"] == "1"
    zero = "0000000000000000"
    assert [seen[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")] == [zero] * 5
    assert seen["Seccomp"] == "2", "Docker's default seccomp profile is not applied"
    assert seen["sudo"] is None
    for tool in ("su", "mount", "unshare"):
        if seen[tool] is not None:
            code, output = seen[tool]
            assert code != 0, (tool, output)
            assert not output.strip().startswith("0"), (tool, output)
    for path, uids in seen["setuid_runs"].items():
        assert uids == "exited" or uids == ["1000", "1000"], (path, uids)


# --- Resource abuse (bounded) -------------------------------------------------------

FORK_BOMB = """
import json, subprocess, sys, os, signal
bomb = r'''
import errno, os, sys, time
count, error = 0, ""
deadline = time.monotonic() + 30
while count < 5000 and time.monotonic() < deadline:
    try:
        pid = os.fork()
    except OSError as e:
        error = errno.errorcode.get(e.errno, str(e.errno))
        break
    if pid == 0:
        os.close(1)
        time.sleep(120)
        os._exit(0)
    count += 1
print(count, error, flush=True)
time.sleep(HOLD)
'''
p = subprocess.Popen([sys.executable, "-c", bomb], stdout=subprocess.PIPE, text=True,
                     start_new_session=True)
try:
    count, _, error = p.stdout.readline().strip().partition(" ")
    p.wait(timeout=HOLD + 60)
finally:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
print(json.dumps({"forks": int(count), "error": error}))
"""


def test_fork_bomb_is_bounded_and_others_keep_serving(stack: Stack, pair: Pair) -> None:
    pids_limit = int(stack.value("USER_PIDS_LIMIT"))
    code = FORK_BOMB.replace("HOLD", "15")
    seen, watch = while_watching(stack, pair, lambda: in_alice(stack, pair, code))
    print(f"fork bomb: {seen}, pids limit {pids_limit}, bystander polls {watch}")
    assert seen["error"] == "EAGAIN", seen
    assert 0 < seen["forks"] < pids_limit, seen
    assert watch.polls >= 10 and not watch.failures, watch
    # Alice's own server recovers once her processes are gone.
    assert in_alice(stack, pair, "print(1)") == 1


MEMORY_HOG = """
import json, subprocess, sys, time
hog = r'''
import time
chunks, deadline = [], time.monotonic() + 90
while len(chunks) < LIMIT_MIB * 2 // 64 and time.monotonic() < deadline:
    chunks.append(bytearray(b"x") * (64 << 20))
    print(len(chunks) * 64, flush=True)
'''
# Again until the pressure has lasted 5 s: one hog can be killed within a second, before
# the bystanders were asked more than once.
runs, start = [], time.monotonic()
while not runs or time.monotonic() - start < 5:
    p = subprocess.run([sys.executable, "-c", hog], capture_output=True, text=True, timeout=150)
    lines = p.stdout.split()
    runs.append({"returncode": p.returncode, "peak_mib": int(lines[-1]) if lines else 0})
print(json.dumps(runs))
"""


def test_memory_hog_is_killed_and_others_keep_serving(stack: Stack, pair: Pair) -> None:
    limit_mib = int(user_container(STACK, pair.alice).attrs["HostConfig"]["Memory"]) // 2**20
    assert limit_mib > 0, "alice's container has no memory limit"
    code = MEMORY_HOG.replace("LIMIT_MIB", str(limit_mib))
    seen, watch = while_watching(stack, pair, lambda: in_alice(stack, pair, code))
    print(f"memory hog: {seen}, limit {limit_mib} MiB, bystander polls {watch}")
    # The kernel's OOM killer ends each hog (SIGKILL) before it gets past the limit.
    assert seen and all(run["returncode"] == -9 for run in seen), seen
    assert all(run["peak_mib"] <= limit_mib for run in seen), seen
    assert watch.polls >= 3 and not watch.failures, watch
    assert in_alice(stack, pair, "print(2)") == 2


DISK_FILLER = """
import json, os, time
path, chunk, written = "/tmp/labhub-disk-filler", b"\\0" * (16 << 20), 0
start = time.monotonic()
error = ""
try:
    with open(path, "wb") as f:
        while written < GIB << 30 and time.monotonic() - start < 120:
            f.write(chunk)
            written += len(chunk)
        f.flush()
        os.fsync(f.fileno())
except OSError as e:
    error = repr(e)
finally:
    seconds = time.monotonic() - start
    if os.path.exists(path):
        os.remove(path)
print(json.dumps({"written_mib": written >> 20, "seconds": round(seconds, 1), "error": error,
                  "cleaned": not os.path.exists(path)}))
"""


def test_disk_filler_leaves_others_serving(stack: Stack, pair: Pair) -> None:
    """/tmp is a memory file system of USER_TMP_SIZE (1G by default) on a read-only root
    (docs/security.md#the-writable-layer; homes have QUOTA_ROOT): asked for 2 GiB, the
    filler stops at 1 GiB with ENOSPC, the others keep serving meanwhile, and the file
    is gone after."""
    code = DISK_FILLER.replace("GIB", "2")
    seen, watch = while_watching(stack, pair, lambda: in_alice(stack, pair, code))
    print(f"disk filler: {seen}, bystander polls {watch}")
    assert seen["cleaned"], seen
    assert "No space left on device" in seen["error"], seen
    assert 1024 - 32 <= seen["written_mib"] <= 1024, seen  # 16 MiB chunks
    assert watch.polls >= 1 and not watch.failures, watch


# --- User configuration -------------------------------------------------------------


def test_user_config_cannot_change_the_server_environment(stack: Stack, username: str) -> None:
    """~/.jupyter config and a user-site .pth would run in the server if loaded. The .pth
    does run in the student's own kernels: ~/.local is where `pip install --user` puts
    their packages (issue 18), for their kernels, never for the server."""
    client = stack.login(username)
    client.start_server(username)
    planted = stack.run(
        client,
        username,
        """
import os, sys, sysconfig
payload = ("import os; os.environ['LABHUB_PROBE'] = 'loaded'; "
           "open('/home/jovyan/.probe-{0}-%d' % os.getpid(), 'w').write('loaded')")
os.makedirs("/home/jovyan/.jupyter", exist_ok=True)
for name in ("jupyter_server_config.py", "jupyter_notebook_config.py"):
    with open(f"/home/jovyan/.jupyter/{name}", "w") as f:
        f.write(payload.format(name) + "\\nc.ServerApp.disable_check_xsrf = True\\n")
with open("/home/jovyan/.jupyter/jupyter_server_config.json", "w") as f:
    f.write('{"ServerApp": {"disable_check_xsrf": true}}')
site = sysconfig.get_path("purelib", f"{os.name}_user")
os.makedirs(site, exist_ok=True)
with open(os.path.join(site, "labhub_probe.pth"), "w") as f:
    f.write(payload.format("pth") + "\\n")
print(site)
""",
    )
    assert planted.strip().startswith("/home/jovyan/")
    client.stop_server(username)
    client.start_server(username)
    seen = json.loads(
        stack.run(
            client,
            username,
            """
import glob, json, os
server = os.getppid()
environ = open(f"/proc/{server}/environ", "rb").read().decode("latin-1")
print(json.dumps({
    "server_cmd": open(f"/proc/{server}/cmdline", "rb").read().decode().replace("\\0", " "),
    "probe_in_server_env": "LABHUB_PROBE" in environ,
    "probe_in_kernel_env": "LABHUB_PROBE" in os.environ,
    "disable_user_config": "JUPYTERHUB_DISABLE_USER_CONFIG=1" in environ,
    "markers": glob.glob("/home/jovyan/.probe-*"),
    "server_pid": server,
    "kernel_pid": os.getpid(),
}))
""",
        ).strip()
    )
    assert "jupyterhub-singleuser" in seen["server_cmd"] or "jupyter" in seen["server_cmd"], seen
    assert seen["disable_user_config"], seen
    assert not seen["probe_in_server_env"], seen
    # Only the student's kernels ran the .pth; nothing ran in the server.
    assert seen["probe_in_kernel_env"], seen
    assert all(m.startswith("/home/jovyan/.probe-pth-") for m in seen["markers"]), seen
    assert f"/home/jovyan/.probe-pth-{seen['kernel_pid']}" in seen["markers"], seen
    assert not [m for m in seen["markers"] if m.endswith(f"-{seen['server_pid']}")], seen
    client.stop_server(username)


# --- Odd usernames --------------------------------------------------------------------


def test_odd_usernames_get_distinct_safe_volumes_on_the_real_stack(stack: Stack) -> None:
    from labhub.contract import volume_name_for, volume_prefix

    suffix = uuid.uuid4().hex[:6]
    unicode_name = f"zoë.{suffix}"
    # The name a naive escaper would give the first one's volume.
    lookalike = volume_name_for(unicode_name, STACK).removeprefix(volume_prefix(STACK))
    long_name = "l" * 150 + suffix
    names = [unicode_name, lookalike, long_name]
    USERS_CREATED.extend(names)
    clients = {name: stack.login(name) for name in names}
    volumes = {}
    try:
        for name, client in clients.items():
            client.start_server(name)
            mounts = user_container(STACK, name).attrs["Mounts"]
            home = [m for m in mounts if m["Destination"] == "/home/jovyan"]
            assert len(home) == 1 and home[0]["Type"] == "volume", mounts
            volumes[name] = home[0]["Name"]
    finally:
        forget(clients)
    assert len(set(volumes.values())) == len(names), volumes
    for name, volume in volumes.items():
        assert volume == volume_name_for(name, STACK)
        assert volume.isascii() and len(volume) <= 120, volume
        assert all(ch.isalnum() or ch in "-_." for ch in volume), volume


# --- Login: a student's account is theirs alone (issue 14, item 1) ------------------------


def refused_login(
    stack: Stack, username: str, password: str, reason: str = "Invalid username or password"
) -> HubClient:
    """A fresh session that tries `username`'s account with `password`; asserts it failed."""
    client = stack.client()
    response = client.login(username, password, follow=False)
    assert response.status_code == 403, (response.status_code, response.headers)
    assert not client.logged_in, f"logged in as {username} with {password!r}"
    assert reason in response.text, response.text[:500]
    return client


def test_a_classmate_cannot_enter_an_existing_students_account(stack: Stack, pair: Pair) -> None:
    url = stack.base_url + f"/user/{pair.bob}/files/bob-secret.txt"
    # Bob's own session reads his file: there is something to steal.
    own = pair.bob_client.session.get(url, timeout=60)
    assert own.status_code == 200 and pair.bob_marker in own.text
    # What a classmate knows. Three tries: five wrong ones would lock bob's account.
    known = {
        "the class's sign-up code": stack.value("SIGNUP_CODE"),
        "the classmate's own password": stack.password_of(pair.alice),
        "bob's name": pair.bob,
    }
    for what, password in known.items():
        attacker = refused_login(stack, pair.bob, password)
        stolen = attacker.session.get(url, timeout=60)
        assert pair.bob_marker not in stolen.text, what
        assert urlparse(stolen.url).path == "/hub/login", (what, stolen.url)
        assert attacker.api("GET", f"/users/{pair.bob}").status_code == 403, what


def test_signing_up_again_under_an_existing_name_is_refused(stack: Stack, username: str) -> None:
    stack.login(username)  # the student's own account, made with the class's code
    attacker = stack.client()
    for name in (username, username.upper()):
        answer = attacker.signup(name, "the-attackers-password", stack.value("SIGNUP_CODE"))
        assert answer.status_code == 200
        assert "already in use" in answer.text, answer.text[:500]
    refused_login(stack, username, "the-attackers-password")
    # The student's own password still works, unchanged.
    assert stack.login(username).logged_in


def test_a_sign_up_without_the_code_waits_for_an_admin(stack: Stack, username: str) -> None:
    client = stack.client()
    answer = client.signup(username, stack.password_of(username))
    assert "waits for an administrator" in answer.text
    refused_login(stack, username, stack.password_of(username), reason="not been authorized")
    admin = stack.admin()
    approve = admin.session.get(admin.url(f"/hub/authorize/{username}"), timeout=60)
    assert approve.status_code == 200, approve.status_code
    assert stack.login(username).logged_in


def test_the_code_does_not_hand_out_a_name_the_hub_already_knows(
    stack: Stack, username: str
) -> None:
    # A user from before AUTH=native (e.g. workshop mode): in the hub, with no password.
    admin = stack.admin()
    assert admin.api("POST", f"/users/{username}").status_code == 201
    answer = stack.client().signup(username, "the-attackers-password", stack.value("SIGNUP_CODE"))
    assert "waits for an administrator" in answer.text, answer.text[:500]
    refused_login(stack, username, "the-attackers-password", reason="not been authorized")


def test_a_user_made_through_the_api_logs_in_once_an_admin_approved(
    stack: Stack, username: str
) -> None:
    # What tests/test_gpus.py does: users made by the admin API, then logged in.
    admin = stack.admin()
    assert admin.api("POST", f"/users/{username}").status_code == 201
    client = stack.client()
    client.login(username, stack.ensure_account(username), follow=False)
    assert client.logged_in


def test_changing_a_password_needs_the_current_one_and_never_500s(
    stack: Stack, username: str
) -> None:
    client = stack.client()
    client.login(username, stack.ensure_account(username), follow=False)
    new = "a-new-password-" + username
    for current in ("x" * 100, "wrong-password-1"):  # over bcrypt's 72 bytes, and wrong
        answer = client.session.post(
            client.url("/hub/change-password"),
            data={
                "old_password": current,
                "new_password": new,
                "new_password_confirmation": new,
                "_xsrf": client.xsrf(),
            },
            timeout=60,
        )
        assert answer.status_code == 200, answer.status_code
        assert "Your current password was incorrect" in answer.text
    refused_login(stack, username, new)


def test_repeated_wrong_passwords_lock_the_account(stack: Stack, username: str) -> None:
    password = stack.ensure_account(username)
    for attempt in range(5):
        refused_login(stack, username, f"guess-{attempt}-{password[:3]}")
    # Locked: even the right password is refused now (for ten minutes).
    refused_login(stack, username, password)
    # Only this account: another student logs in as usual.
    other = f"{username}-other"
    USERS_CREATED.append(other)
    client = stack.client()
    client.login(other, stack.ensure_account(other), follow=False)
    assert client.logged_in


def test_the_hub_refuses_workshop_mode_without_the_opt_in(stack: Stack) -> None:
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "-e",
            "AUTH=shared-password",
            "-e",
            "CONFIGPROXY_AUTH_TOKEN=" + "x" * 40,
            "-e",
            "SHARED_USER_PASSWORD=long-enough",
            f"labhub/hub:{VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "AUTH=shared-password is workshop mode" in result.stderr
    assert "set WORKSHOP_MODE=true" in result.stderr
    assert "Traceback" not in result.stderr
