"""Edit on a CPU, train on a GPU (named servers on one home), and the bounded writable layer.

End to end on a stack of its own with a declared inventory (one exclusive GPU; NVIDIA's
container hook is stood in by tests/fake-gpu, as in tests/test_gpus.py, and these tests
skip where the engine has no such driver): a student keeps the default server on the CPU
profile and starts a named server `train` on `gpu-1`. Both are real JupyterLab servers;
what they share is tried in the student's own kernels, which server holds the device is
read from the engine and from the GPU admin API. /tmp is filled in the student's kernel
and the engine is asked how much the container wrote to the host's disk.

The attack tests run the Docker socket proxy on a loopback port in front of the real
engine (as tests/test_dockerproxy.py does) and ask the engine afterwards whether the
refused container exists.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest
import requests
from browser import chromium, needs_chromium
from gpustack import nvidia_driver_missing
from labhub.contract import OWNER_LABEL, container_name_prefix, volume_name_for
from stacks import USERS_CREATED, Stack, launched_stack
from test_dockerproxy import refused, workspace_kwargs

from testsupport.browsing import despite_network_changes
from testsupport.containers import user_containers
from testsupport.dockerproxy import running_proxy
from testsupport.hubclient import HubClient, run_in_kernel
from testsupport.images import ensure_base_image
from testsupport.waiting import wait_until

# A GPU stack of its own, beside test_gpus' and test_reclaim's (+1).
STACK = os.environ.get("LABHUB_GPU_TEST_STACK", "labhubgpu") + "named"
HTTPS_PORT = int(os.environ.get("LABHUB_GPU_TEST_HTTPS_PORT", "19443")) + 2
MIB = 1 << 20
TMP_SIZE = 256 * MIB
GPU_IDLE_TIMEOUT = 90
INVENTORY = {"devices": [{"id": "0", "model": "Test A100", "memory_mib": 40960}]}
PROFILES = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "cpu_limit": 1, "mem_limit": "2G"},
        {"slug": "gpu-1", "display_name": "One whole GPU", "gpu": 1, "mem_limit": "2G"},
    ]
}


# --- the stack and its students -------------------------------------------------------


@pytest.fixture(scope="module")
def homes_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = nvidia_driver_missing()
    if reason:
        pytest.skip(reason)
    config = tmp_path_factory.mktemp("homes-gpu-config")
    (config / "gpus.json").write_text(json.dumps(INVENTORY))
    (config / "profiles.json").write_text(json.dumps(PROFILES))
    config.chmod(0o755)
    for name in ("gpus.json", "profiles.json"):
        (config / name).chmod(0o644)
    extra = {
        "GPU_CONFIG_DIR": str(config),
        "GPU_INVENTORY": "/srv/labhub/gpus.json",
        "GPU_PROFILES": "/srv/labhub/profiles.json",
        "GPU_IDLE_TIMEOUT": str(GPU_IDLE_TIMEOUT),
        "GPU_CULL_EVERY": "10",
        "USER_TMP_SIZE": f"{TMP_SIZE // MIB}M",
        "NAMED_SERVERS": "1",
    }
    with launched_stack(tmp_path_factory, STACK, HTTPS_PORT, extra) as running:
        yield running


@dataclass
class Student:
    """A student signed up on the stack, driving their own servers through the hub's API
    with their own session (as the home page's buttons do)."""

    stack: Stack
    name: str
    client: HubClient

    def servers_path(self, server: str) -> str:
        return f"/users/{self.name}/servers/{server}" if server else f"/users/{self.name}/server"

    def start(self, server: str, profile: str) -> None:
        response = self.client.api("POST", self.servers_path(server), json={"profile": profile})
        assert response.status_code in (201, 202), response.text
        self.wait(server, ready=True)

    def stop(self, server: str) -> None:
        response = self.client.api("DELETE", self.servers_path(server))
        assert response.status_code in (202, 204), response.text
        self.wait(server, ready=False)

    def server(self, server: str) -> dict[str, Any] | None:
        model = self.client.api("GET", f"/users/{self.name}").json()
        found: dict[str, Any] | None = (model.get("servers") or {}).get(server)
        return found

    def wait(self, server: str, ready: bool, timeout: float = 300) -> None:
        def state() -> dict[str, Any] | None:
            found = self.server(server)
            if ready and not found:
                raise AssertionError(f"{self.name}/{server}: the spawn failed")
            return found

        wait_until(
            state,
            timeout,
            f"{self.name}'s server {server!r} to be {'ready' if ready else 'gone'}",
            done=lambda found: bool(found and found.get("ready")) if ready else found is None,
        )

    def run(self, server: str, code: str) -> str:
        """Python in a fresh kernel of one of the student's servers; its stdout."""
        token = self.client.new_token(self.name)
        # A named server lives at /user/<name>/<server>/: the kernel client takes the path.
        path = f"{self.name}/{server}" if server else self.name
        return run_in_kernel(self.stack.base_url, self.stack.ca_file, path, token, code)


def new_student(stack: Stack) -> Student:
    name = f"homes{uuid.uuid4().hex[:8]}"
    USERS_CREATED.append(name)
    client = stack.client()
    response = client.login(name, stack.ensure_account(name), follow=False)
    assert response.status_code == 302 and client.logged_in, response.text[:300]
    return Student(stack, name, client)


def gpu_holders(stack: Stack) -> dict[str, list[str]]:
    """Device id -> holders, from the GPU admin API with an admin's token."""
    http = requests.Session()
    http.trust_env = False
    http.verify = stack.ca_file
    http.headers["Authorization"] = f"token {stack.admin().new_token('admin')}"
    response = http.get(f"{stack.base_url}/services/gpus/api/devices", timeout=60)
    assert response.status_code == 200, response.text
    return {d["id"]: sorted(h["holder"] for h in d["holders"]) for d in response.json()["devices"]}


def containers_by_name(name: str) -> dict[str, dict[str, Any]]:
    """The engine's `docker inspect` of each of the user's containers, by container name."""
    return {c.name: c.attrs for c in user_containers(STACK, name)}


def devices_of(inspect: dict[str, Any]) -> list[str]:
    requests_ = inspect["HostConfig"].get("DeviceRequests") or []
    return [d for r in requests_ if r["Driver"] == "nvidia" for d in r["DeviceIDs"]]


def home_volumes(inspect: dict[str, Any]) -> list[tuple[str, bool]]:
    return [
        (m["Name"], m["RW"])
        for m in inspect["Mounts"]
        if m["Type"] == "volume" and m["Destination"] == "/home/jovyan"
    ]


# --- Edit on a CPU, train on a GPU ----------------------------------------------------


@pytest.mark.e2e
def test_a_cpu_server_and_a_gpu_server_share_one_home(homes_stack: Stack) -> None:
    student = new_student(homes_stack)
    student.start("", "cpu")
    student.start("train", "gpu-1")

    # Each sees what the other wrote, in the one home.
    student.run("", "open('/home/jovyan/edited-on-cpu.py', 'w').write('EPOCHS = 3\\n')")
    seen_on_gpu = student.run(
        "train",
        "import os\n"
        "print(open('/home/jovyan/edited-on-cpu.py').read().strip())\n"
        "open('/home/jovyan/trained-on-gpu.txt', 'w').write('accuracy 0.99')\n"
        "print(os.environ['NVIDIA_VISIBLE_DEVICES'])",
    )
    assert seen_on_gpu.split() == ["EPOCHS", "=", "3", "0"], seen_on_gpu
    seen_on_cpu = student.run(
        "",
        "import os\n"
        "print(open('/home/jovyan/trained-on-gpu.txt').read())\n"
        "print(os.environ['NVIDIA_VISIBLE_DEVICES'])",
    )
    assert seen_on_cpu.split() == ["accuracy", "0.99", "void"], seen_on_cpu

    # The engine: two containers on the same volume; only `train` has a device request.
    prefix = container_name_prefix(STACK)
    boxes = containers_by_name(student.name)
    assert sorted(boxes) == [prefix + student.name, f"{prefix}{student.name}--train"]
    home = volume_name_for(student.name, STACK)
    cpu_box, gpu_box = boxes[prefix + student.name], boxes[f"{prefix}{student.name}--train"]
    assert home_volumes(cpu_box) == home_volumes(gpu_box) == [(home, True)]
    assert devices_of(cpu_box) == [] and devices_of(gpu_box) == ["0"]
    # The allocator booked the device to the server, not to the student.
    assert gpu_holders(homes_stack) == {"0": [f"{student.name}/train"]}

    # Training done: stopping `train` frees the GPU; the CPU server keeps running.
    student.stop("train")
    assert gpu_holders(homes_stack) == {"0": []}
    cpu_server = student.server("")
    assert cpu_server is not None and cpu_server["ready"]
    student.stop("")


@pytest.mark.e2e
def test_an_idle_gpu_server_is_reclaimed_and_the_cpu_server_stays(homes_stack: Stack) -> None:
    """GPU_IDLE_TIMEOUT stops only the server that holds a device."""
    student = new_student(homes_stack)
    student.start("", "cpu")
    student.start("train", "gpu-1")
    assert gpu_holders(homes_stack) == {"0": [f"{student.name}/train"]}
    # Idle: nothing more is done in `train`; the GPU culler runs every 10 s.
    student.wait("train", ready=False, timeout=GPU_IDLE_TIMEOUT + 150)
    assert gpu_holders(homes_stack) == {"0": []}
    cpu_server = student.server("")
    assert cpu_server is not None and cpu_server["ready"], cpu_server
    assert student.run("", "print(6 * 7)").strip() == "42"
    student.stop("")


@pytest.mark.e2e
def test_one_named_server_besides_the_default_by_default(homes_stack: Stack) -> None:
    student = new_student(homes_stack)
    student.start("notes", "cpu")
    refused_second = student.client.api(
        "POST", student.servers_path("second"), json={"profile": "cpu"}
    )
    assert refused_second.status_code == 400, refused_second.text
    assert "already has the maximum of 1 named servers" in refused_second.json()["message"]
    assert student.server("second") is None
    student.stop("notes")


@pytest.mark.e2e
def test_the_home_and_spawn_pages_show_the_pattern(homes_stack: Stack) -> None:
    student = new_student(homes_stack)
    home = student.client.session.get(homes_stack.base_url + "/hub/home", timeout=60)
    assert home.status_code == 200
    assert 'id="named-server-pattern"' in home.text
    assert "Edit on a CPU, train on a GPU." in home.text
    assert 'class="new-server-name' in home.text  # JupyterHub's named-server form
    assert f'href="/hub/spawn/{student.name}/train"' in home.text
    spawn = student.client.session.get(
        f"{homes_stack.base_url}/hub/spawn/{student.name}/train", timeout=60
    )
    assert spawn.status_code == 200
    assert 'id="named-server-pattern"' in spawn.text
    assert 'value="gpu-1"' in spawn.text and 'value="cpu"' in spawn.text


@pytest.mark.e2e
@needs_chromium
def test_a_student_starts_the_gpu_server_from_the_home_page_in_a_browser(
    homes_stack: Stack,
) -> None:
    """The clicks the user guide describes: Home, "Start a server named train…", a GPU
    profile, Start; the engine then has the `train` container with the device."""
    from playwright.sync_api import expect

    student = new_student(homes_stack)
    student.start("", "cpu")
    with chromium(homes_stack) as browser:
        # The student's own login (their session's cookies): this test is about the pages
        # after it, and the login form is tested elsewhere (tests/test_browser.py).
        context = browser.new_context()
        context.add_cookies(
            [
                {"name": c.name, "value": c.value or "", "url": homes_stack.base_url + c.path}
                for c in student.client.session.cookies
            ]
        )
        page = context.new_page()
        despite_network_changes(lambda: page.goto(homes_stack.base_url + "/hub/home"))
        expect(page.locator("#named-server-pattern")).to_contain_text("train on a GPU")
        despite_network_changes(lambda: page.click("#train-on-a-gpu"))
        page.wait_for_url(f"**/hub/spawn/{student.name}/train")
        expect(page.locator("#named-server-pattern")).to_be_visible()
        page.check('input[name="profile"][value="gpu-1"]')
        despite_network_changes(lambda: page.click('#spawn_form button[type="submit"]'))
        student.wait("train", ready=True)
    prefix = container_name_prefix(STACK)
    boxes = containers_by_name(student.name)
    assert devices_of(boxes[f"{prefix}{student.name}--train"]) == ["0"]
    assert devices_of(boxes[prefix + student.name]) == []
    student.stop("train")
    student.stop("")


# --- The writable layer ---------------------------------------------------------------

TMP_FILLER = """
import json, os
path, chunk, written, error = "/tmp/filler", b"\\0" * (1 << 20), 0, None
try:
    with open(path, "wb", buffering=0) as f:
        while written < (1 << 30):
            written += f.write(chunk)
except OSError as e:
    error = [e.errno, e.strerror]
elsewhere = {}
for target in ("/var/tmp/x", "/x", "/opt/x"):
    try:
        open(target, "wb").close()
        elsewhere[target] = "written"
    except OSError as e:
        elsewhere[target] = e.strerror
print(json.dumps({"written": written, "error": error, "elsewhere": elsewhere,
                  "kept": os.path.getsize(path)}))
"""


@pytest.mark.e2e
def test_tmp_fills_to_its_bound_and_the_hosts_disk_is_untouched(homes_stack: Stack) -> None:
    student = new_student(homes_stack)
    student.start("", "cpu")
    seen = json.loads(student.run("", TMP_FILLER))
    print(f"tmp filler: {seen}")
    assert seen["error"] == [28, "No space left on device"], seen
    assert TMP_SIZE - 2 * MIB <= seen["written"] <= TMP_SIZE, seen
    assert set(seen["elsewhere"].values()) == {"Read-only file system"}, seen

    # The full /tmp is memory, not the host's disk: the engine's own numbers.
    [container] = user_containers(STACK, student.name)
    [listed] = docker.from_env().api.containers(size=True, filters={"id": container.id})
    written_to_disk = listed.get("SizeRw", 0)  # the engine leaves out a size of 0
    memory = container.stats(stream=False)["memory_stats"]["usage"]
    print(f"SizeRw {written_to_disk} B, memory {memory >> 20} MiB")
    assert written_to_disk < MIB, listed
    assert memory > TMP_SIZE, memory

    # The server stays up: another kernel runs, the file is removed, the hub says ready.
    assert student.run("", "import os; os.remove('/tmp/filler'); print('ok')").strip() == "ok"
    server = student.server("")
    assert server is not None and server["ready"]
    student.stop("")


LOG_FILLER = """
with open("/proc/1/fd/1", "wb", buffering=0) as out:  # the server's standard output
    for _ in range(30):
        out.write(b"x" * ((1 << 20) - 1) + b"\\n")
print("written")
"""


@pytest.mark.e2e
def test_the_container_log_is_rotated_and_bounded(homes_stack: Stack) -> None:
    """What the server prints goes to Docker's log on the host's disk, and the student
    can print there (/proc/1/fd/1): 30 MiB written leave at most 2 files of 10 MiB."""
    student = new_student(homes_stack)
    student.start("", "cpu")
    assert student.run("", LOG_FILLER).strip() == "written"
    [container] = user_containers(STACK, student.name)
    log = container.attrs["LogPath"]
    sizes = {path: os.path.getsize(path) for path in glob.glob(log + "*")}
    print(f"container log files: {sizes}")
    assert 0 < sum(sizes.values()) <= 2 * 10 * MIB + MIB, sizes
    student.stop("")


# --- Attacks on the proxy -------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy_world() -> Iterator[dict[str, Any]]:
    """A network, the base image in the workspace image's place, and a proxy for them."""
    engine = docker.from_env()
    network = f"{STACK}-homestest-{uuid.uuid4().hex[:6]}"
    image = ensure_base_image()
    net = engine.networks.create(network, internal=True, labels={"labhub.test": "homes"})
    try:
        with running_proxy(ALLOWED_IMAGES=image, DOCKER_NETWORK=network) as port:
            proxied = docker.DockerClient(
                base_url=f"tcp://127.0.0.1:{port}", version="1.41", timeout=60
            )
            yield {"network": network, "image": image, "proxied": proxied, "engine": engine}
    finally:
        for container in engine.containers.list(all=True, filters={"network": network}):
            container.remove(force=True)
        net.remove()
        for volume in engine.volumes.list(filters={"name": network}):
            with contextlib.suppress(docker.errors.NotFound):
                volume.remove(force=True)


def created_through_the_proxy(world: dict[str, Any], name: str, **kwargs: Any) -> None:
    """Create through the proxy, then remove what the engine made."""
    container = world["proxied"].containers.create(**kwargs, name=name)
    world["engine"].containers.get(container.id).remove(force=True)


def engine_has(world: dict[str, Any], name: str) -> bool:
    time.sleep(0.2)  # a create the proxy had forwarded would be there by now
    return bool(world["engine"].api.containers(all=True, filters={"name": f"^/{name}$"}))


# What the create changes, and what the refusal names.
WITHOUT_THE_BOUND: dict[str, tuple[dict[str, Any], str]] = {
    "writable-root": ({"read_only": False}, "ReadonlyRootfs"),
    "no-tmp": ({"tmpfs": {}}, "Tmpfs"),
    "unsized-tmp": ({"tmpfs": {"/tmp": "rw,nosuid,nodev,mode=1777"}}, "size="),
    # The memory limit is 512m.
    "tmp-over-memory": ({"tmpfs": {"/tmp": f"size={1 << 30}"}}, "the size must be"),
    "unrotated-log": ({"log_config": {"Type": "json-file", "Config": {}}}, "LogConfig"),
}


@pytest.mark.integration
@pytest.mark.parametrize("change", sorted(WITHOUT_THE_BOUND))
def test_a_container_without_the_bound_is_refused(proxy_world: dict[str, Any], change: str) -> None:
    network, image = proxy_world["network"], proxy_world["image"]
    owner = f"tmp{uuid.uuid4().hex[:6]}"
    name = container_name_prefix(network) + owner
    kwargs = workspace_kwargs(image, network, volume_name_for(owner, network))
    kwargs["labels"] = {OWNER_LABEL: owner, "labhub.test": "homes"}
    # The control: with the bound, the same create goes through.
    created_through_the_proxy(proxy_world, name, **kwargs)
    changed, reason = WITHOUT_THE_BOUND[change]
    message = refused(
        lambda: proxy_world["proxied"].containers.create(**{**kwargs, **changed}, name=name)
    )
    assert reason in message, message
    assert not engine_has(proxy_world, name)


@pytest.mark.integration
def test_a_named_servers_container_cannot_mount_another_students_home(
    proxy_world: dict[str, Any],
) -> None:
    network, image = proxy_world["network"], proxy_world["image"]
    alice, bob = f"alice{uuid.uuid4().hex[:6]}", f"bob{uuid.uuid4().hex[:6]}"
    name = f"{container_name_prefix(network)}{alice}--train"
    labels = {OWNER_LABEL: alice, "labhub.test": "homes"}
    own = workspace_kwargs(image, network, volume_name_for(alice, network), labels=labels)
    # The control: alice's named server on alice's home is created.
    created_through_the_proxy(proxy_world, name, **own)
    others = workspace_kwargs(image, network, volume_name_for(bob, network), labels=labels)
    message = refused(lambda: proxy_world["proxied"].containers.create(**others, name=name))
    assert f"a container of {alice!r} mounts only" in message, message
    assert not engine_has(proxy_world, name)
    # Nor beside her own home.
    both = dict(own)
    both["volumes"] = {
        **own["volumes"],
        volume_name_for(bob, network): {"bind": "/mnt/bob", "mode": "ro"},
    }
    refused(lambda: proxy_world["proxied"].containers.create(**both, name=name))
    assert not engine_has(proxy_world, name)
