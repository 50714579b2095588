"""GPUs through `make up` with ENGINE=swarm: a student's GPU server on the device's node.

On a two-engine test cluster (tests/swarmstack.py) whose engines run the stand-in NVIDIA
runtime as their default (tests/fake-gpu, as tests/test_swarm_gpus.py), `make up` with a
GPU_INVENTORY file naming the worker's node ID for its one GPU (id 1) wires
LabSwarmGpuSpawner into the hub and gives the Docker proxy the hub's GPU record read-only.
A student logs in through nginx over TLS and picks the GPU profile on the spawn form: the
task runs on the worker and sees exactly `/dev/nvidia1`; the admin's api/devices shows the
booking on that node; a second student asking for a GPU is told all are busy; a stop frees
it. Without this wiring `make up` stops at check-settings (GPU_INVENTORY refused).

Each node's GPUs are read on that node: every node's Docker proxy runs the stand-in
nvidia-smi the runtime gives a container that sees GPUs, with that node's figures
(`Node.fake_nvml`), and the admin's api/devices shows the worker's figures for its GPU, not
the manager's for the GPU of the same index there, nor none (as before: nvidia-smi ran in
the hub's container only).

The stack's IDLE_TIMEOUT is short (IDLE_TIMEOUT_S): the hub-wide idle culler stops a GPU
server left idle, its service goes from the manager, its device is free for another
student, its home stays on its node and the next spawn lands there; a server whose page is
in use through nginx and configurable-http-proxy (on the user's overlay network) is kept.
The other tests stop each server within seconds of its being ready, well within it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from gpustack import Admin
from labhub.contract import volume_name_for
from labhub.gpu.reclaim import NO_NVML
from stacks import STACK, USERS_CREATED, Stack
from swarm import Node, Swarm
from swarmlab import wait_for_running_task
from swarmstack import PREFIX, SwarmStack, make, swarm_stack_up

from testsupport.hubclient import token_session
from testsupport.waiting import wait_until

pytestmark = [pytest.mark.swarm, pytest.mark.e2e, pytest.mark.timeout(2400)]

RUNTIME = Path(__file__).parent / "fake-gpu" / "nvidia-container-runtime"
# The one GPU, on the worker: a server that gets it runs away from the hub's node.
DEVICE_ID = "1"
PROFILES = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU only", "cpu_limit": 1, "mem_limit": "2G"},
        # Within the test nodes' two cores (a task asking more than a node has fails).
        {"slug": "gpu-1", "display_name": "One whole GPU", "gpu": 1, "cpu_limit": 1,
         "mem_limit": "3G"},
    ]
}  # fmt: skip
# Servers idle this long are stopped by the idle culler, which looks every 60 s
# (hub/jupyterhub_config.py); the hub reads the proxy's activity every 30 s.
IDLE_TIMEOUT_S, CULL_EVERY_S, ACTIVITY_EVERY_S = 90, 60, 30
# A GPU that reads 0 % this long on its node stops its server, warned this long before;
# the GPU service looks this often. Any other figure is use: the other tests' GPUs read more.
GPU_IDLE_S, GPU_WARN_S, GPU_CULL_EVERY_S = 30, 20, 3


def nvml_reports(node: Node, percent: int, used_mib: int) -> None:
    """What the stand-in nvidia-smi says of GPU DEVICE_ID on ``node`` from now on."""
    gpu = {"index": DEVICE_ID, "uuid": f"GPU-{node.name}", "name": "Fake A100",
           "memory.total": 40960, "utilization.gpu": percent, "memory.used": used_mib}  # fmt: skip
    # Rewritten in place: the node's containers see it through a bind mount of this file.
    node.fake_nvml.write_text(json.dumps({"gpus": [gpu]}))
    node.fake_nvml.chmod(0o644)


def gpu_files(folder: Path, swarm: Swarm) -> dict[str, str]:
    """GPU_CONFIG_DIR with the inventory (the worker's node ID: all nodes share a hostname)
    and the profiles, readable by the hub; the .env lines that name them. Each node's
    stand-in nvidia-smi figures, before the containers that read them start."""
    nvml_reports(swarm.manager, 90, 30000)  # a GPU of the same index on the hub's node
    nvml_reports(swarm.workers[0], 37, 1234)
    worker = swarm.workers[0].node_id
    inventory = {
        "devices": [{"id": DEVICE_ID, "model": "Fake A100", "memory_mib": 40960, "node": worker}]
    }
    (folder / "gpus.json").write_text(json.dumps(inventory))
    (folder / "profiles.json").write_text(json.dumps(PROFILES))
    folder.chmod(0o755)
    for name in ("gpus.json", "profiles.json"):
        (folder / name).chmod(0o644)
    return {
        "GPU_CONFIG_DIR": str(folder),
        "GPU_INVENTORY": "/srv/labhub/gpus.json",
        "GPU_PROFILES": "/srv/labhub/profiles.json",
    }


@contextmanager
def gpu_stack_up(
    tmp_path_factory: pytest.TempPathFactory, name: str, extra: dict[str, str]
) -> Iterator[SwarmStack]:
    """`swarm_stack_up` on engines whose default runtime is the stand-in NVIDIA one, with
    its hook on their PATH as the toolkit installs it (so `--gpus` works too), the GPU files
    (`gpu_files`) and `extra` in the .env."""
    config = tmp_path_factory.mktemp("gpu-config")
    runtime = ["--add-runtime", f"nvidia={RUNTIME}", "--default-runtime", "nvidia"]
    with swarm_stack_up(
        tmp_path_factory.mktemp(name),
        extra=extra,
        dockerd_args=runtime,
        dockerd_path=[RUNTIME.parent],
        extra_for=lambda swarm: gpu_files(config, swarm),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def gpu_swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwarmStack]:
    extra = {
        "IDLE_TIMEOUT": str(IDLE_TIMEOUT_S),
        "GPU_UTILISATION_IDLE_TIMEOUT": str(GPU_IDLE_S),
        "GPU_UTILISATION_WARN": str(GPU_WARN_S),
        "GPU_CULL_EVERY": str(GPU_CULL_EVERY_S),
    }
    with gpu_stack_up(tmp_path_factory, "swarm-gpu-stack", extra) as running:
        yield running


def token_of(stack: Stack, user: str) -> str:
    """A token of `user`, logged in without following the hub's redirects (they name
    DOMAIN, localhost, not the manager this host reaches nginx at)."""
    client = stack.client()
    login = client.login(user, stack.ensure_account(user), follow=False)
    assert login.status_code == 302 and client.logged_in, login.text[:300]
    return client.new_token(user)


def devices_in_task(swarm_stack: SwarmStack, node_id: str, service: str) -> list[str]:
    """The /dev/nvidia* device nodes the service's task sees, on its node."""
    node = swarm_stack.node(node_id)
    [container] = node.docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}"
    ).split()
    listing = node.docker("exec", container, "sh", "-c", "ls /dev | grep '^nvidia' || true")
    return sorted(listing.split())


def test_a_student_picks_a_gpu_on_the_form_and_runs_on_its_node_with_exactly_that_device(
    gpu_swarm: SwarmStack,
) -> None:
    stack, worker = gpu_swarm.stack, gpu_swarm.swarm.workers[0].node_id
    admin = Admin(stack, token_of(stack, "admin"))
    first, second = "gpuann", "gpubob"
    USERS_CREATED.extend((first, second))
    client = stack.client()
    login = client.login(first, stack.ensure_account(first), follow=False)
    assert login.status_code == 302 and client.logged_in, login.text[:300]
    # The spawn page offers the GPU profile with the cluster's free devices.
    page = client.session.get(stack.base_url + "/hub/spawn", allow_redirects=False, timeout=60)
    assert page.status_code == 200 and "One whole GPU" in page.text, page.text[:500]
    assert "(1 free now)" in page.text
    form = client.session.post(
        stack.base_url + f"/hub/spawn/{first}",
        data={"profile": "gpu-1", "_xsrf": client.xsrf()},
        allow_redirects=False,
        timeout=120,
    )
    assert form.status_code == 302, form.text[:500]
    admin.wait(first, ready=True, timeout=600)

    # The task runs on the device's node (not the hub's) and sees exactly its device.
    service = f"{PREFIX}-{first}"
    assert wait_for_running_task(gpu_swarm.swarm, service) == worker
    assert devices_in_task(gpu_swarm, worker, service) == [f"nvidia{DEVICE_ID}"]
    # The admin's view: the booking, with its node.
    [device] = admin.gpus("GET", "devices").json()["devices"]
    assert device["node"] == worker, device
    assert [h["holder"] for h in device["holders"]] == [first], device

    # A second student asking for a GPU while the only one is taken: busy, no server.
    other = stack.client()
    assert other.login(second, stack.ensure_account(second), follow=False).status_code == 302
    refused = other.api("POST", f"/users/{second}/server", json={"profile": "gpu-1"})
    if refused.status_code in (201, 202):  # a slow spawn: the hub answers, then it fails
        wait_until(lambda: admin.server(second) is None, 120, f"{second}'s spawn to fail")
        message = admin.last_progress(second)
    else:
        message = refused.text
    assert "busy" in message, (refused.status_code, message)
    assert admin.holders() == {f"{DEVICE_ID}@{worker}": [first]}

    # A stop frees the device: the second student gets it, on the worker.
    admin.stop(first)
    assert admin.holders() == {f"{DEVICE_ID}@{worker}": []}
    assert admin.spawn(second, "gpu-1").status_code in (201, 202)
    admin.wait(second, ready=True, timeout=600)
    assert wait_for_running_task(gpu_swarm.swarm, f"{PREFIX}-{second}") == worker
    admin.stop(second)


def test_the_proxy_reads_current_bookings_from_a_read_only_mount_of_the_record(
    gpu_swarm: SwarmStack,
) -> None:
    """The Docker proxy mounts the hub's data volume read-only and is given GPU_DB; that it
    reads the current bookings there is the test above: it creates each GPU service only
    when the record books its devices for its holder (labhub.dockerproxy.verify_gpu_claim)."""
    proxy = json.loads(gpu_swarm.manager.docker("inspect", f"{STACK}-docker-proxy-1"))[0]
    [record] = [m for m in proxy["Mounts"] if m["Destination"] == "/srv/jupyterhub"]
    assert record["RW"] is False
    assert "GPU_DB=/srv/jupyterhub/gpu.sqlite" in proxy["Config"]["Env"]


def test_the_admin_sees_the_gpus_utilisation_read_on_their_own_node(
    gpu_swarm: SwarmStack,
) -> None:
    stack, worker = gpu_swarm.stack, gpu_swarm.swarm.workers[0]
    admin = Admin(stack, token_of(stack, "admin"))

    def figures() -> tuple[int | None, int | None]:
        [device] = admin.gpus("GET", "devices").json()["devices"]
        assert device["id"] == f"{DEVICE_ID}@{worker.node_id}", device
        return device["utilisation_percent"], device["memory_used_mib"]

    # The worker's figures, through its Docker proxy; not the manager's (90 %, 30000 MiB).
    assert figures() == (37, 1234)
    # Live: read at each request, on the node.
    nvml_reports(worker, 5, 800)
    assert figures() == (5, 800)
    # The utilisation rule is not off for want of nvidia-smi in the hub's container.
    rule = admin.gpus("GET", "devices").json()["rules"]["utilisation"]
    assert rule.get("reason") != NO_NVML, rule


def test_make_gpu_inventory_lists_every_nodes_gpus_detected_there(
    gpu_swarm: SwarmStack,
) -> None:
    """The file an admin declares, from what nvidia-smi says on each node: the manager's
    GPU and the worker's, each naming its node by ID (the test nodes share a hostname).
    Before it, the only way was nvidia-smi on each node by hand."""
    made = gpu_swarm.make("gpu-inventory")
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    listed = json.loads(made.stdout)  # all it prints: `make gpu-inventory > gpus.json`
    swarm = gpu_swarm.swarm
    assert sorted(listed["devices"], key=lambda d: d["node"] != swarm.manager.node_id) == [
        {"id": DEVICE_ID, "uuid": f"GPU-{node.name}", "model": "Fake A100",
         "memory_mib": 40960, "policy": "exclusive", "node": node.node_id}
        for node in (swarm.manager, swarm.workers[0])
    ]  # fmt: skip


def test_make_gpu_inventory_on_one_host_lists_that_engines_gpus(
    gpu_swarm: SwarmStack, tmp_path: Path
) -> None:
    """The same command without ENGINE=swarm, on an engine with NVIDIA's runtime (here the
    stand-in, the manager's): `docker run --gpus all` of the hub image, whose nvidia-smi the
    runtime adds, prints that engine's GPUs as a GPU_INVENTORY file, naming no node."""
    env_file = tmp_path / ".env"
    env_file.write_text(gpu_swarm.env_file.read_text() + "ENGINE=docker\n")
    made = make("gpu-inventory", env_file, gpu_swarm.docker_host)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    manager = gpu_swarm.swarm.manager
    assert json.loads(made.stdout) == {
        "devices": [
            {"id": DEVICE_ID, "uuid": f"GPU-{manager.name}", "model": "Fake A100",
             "memory_mib": 40960, "policy": "exclusive"}
        ]
    }  # fmt: skip


def test_a_gpu_idle_on_its_node_warns_the_students_jupyterlab_then_stops_the_server(
    gpu_swarm: SwarmStack,
) -> None:
    """The utilisation rule on the cluster: the worker's GPU reads 0 % there while the
    manager's GPU of the same index reads 90 %. The student's JupyterLab, on the worker,
    shows the warning it got from the GPU service (its status item, through nginx with the
    student's token); then the server stops, though its page is in use through nginx all
    along, and its device is free. Read on the wrong node, it would never stop."""
    stack, swarm = gpu_swarm.stack, gpu_swarm.swarm
    worker = swarm.workers[0]
    admin = Admin(stack, token_of(stack, "admin"))
    student = "utilidler"
    USERS_CREATED.append(student)
    lab = token_session(stack.ca_file, token_of(stack, student))
    service = f"{PREFIX}-{student}"
    nvml_reports(worker, 0, 800)
    try:
        assert admin.spawn(student, "gpu-1").status_code in (201, 202)
        admin.wait(student, ready=True, timeout=600)
        assert wait_for_running_task(swarm, service) == worker.node_id

        def warning() -> str | None:
            used(admin, student)
            status = lab.get(f"{stack.base_url}/user/{student}/labhub/status", timeout=60)
            assert status.status_code == 200, status.text[:300]
            # The server reached the GPU service (before: proxy-chp, no name on its network).
            assert status.json()["service"] == "ok", status.json()
            return status.json()["warning"]

        shown = wait_until(
            warning, GPU_IDLE_S + 60, f"{student}'s JupyterLab to be warned", interval=2
        )
        assert shown.startswith("No GPU use for") and "unless it uses its GPU" in shown

        def stopped() -> bool:
            if admin.server(student) is None:
                return True
            with suppress(AssertionError, requests.RequestException):  # stopping meanwhile
                used(admin, student)
            return False

        wait_until(stopped, GPU_WARN_S + 60, f"{student}'s idle GPU server to stop", interval=2)
    finally:
        nvml_reports(worker, 5, 800)  # in use again, as the next test expects
        admin.stop(student)  # (a no-op once stopped) frees the GPU for the next test
    actions = {(e["action"], e["detail"].get("reason")) for e in admin.culls(student)}
    assert {("warn", "utilisation-idle"), ("cull", "utilisation-idle")} <= actions, actions
    # At the manager's engine the service is gone; the device is free, the home kept.
    manager = docker.APIClient(base_url=f"unix://{swarm.manager.socket}", version="1.41")
    wait_until(
        lambda: [s for s in manager.services() if s["Spec"]["Name"] == service],
        60, f"{service} to be removed", done=lambda services: not services,
    )  # fmt: skip
    assert admin.holders() == {f"{DEVICE_ID}@{worker.node_id}": []}
    worker.docker("volume", "inspect", volume_name_for(student, STACK))


def used(admin: Admin, user: str) -> bool:
    """A request to the user's server through nginx and configurable-http-proxy, as an open
    tab makes: activity the proxy records and the hub reads."""
    response = admin.http.get(f"{admin.stack.base_url}/user/{user}/api/status", timeout=60)
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return True


def last_activity(server: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(server["last_activity"].replace("Z", "+00:00"))


def test_an_idle_gpu_server_is_culled_its_device_freed_and_its_home_kept_on_its_node(
    gpu_swarm: SwarmStack,
) -> None:
    stack, swarm = gpu_swarm.stack, gpu_swarm.swarm
    worker = swarm.workers[0]
    admin = Admin(stack, token_of(stack, "admin"))
    manager = docker.APIClient(base_url=f"unix://{swarm.manager.socket}", version="1.41")
    # Names the service's name keeps as they are (no "-" to escape).
    keeper, idler, taker = users = ["cullkeeper", "cullidler", "culltaker"]
    USERS_CREATED.extend(users)
    created = admin.hub("POST", "/users", json={"usernames": users})
    assert created.status_code == 201, created.text
    # The keeper is ready first: without its activity reaching the hub, it would be
    # culled no later than the idler.
    assert admin.spawn(keeper, "cpu").status_code in (201, 202)
    admin.wait(keeper, ready=True, timeout=600)
    assert admin.spawn(idler, "gpu-1").status_code in (201, 202)
    wait_until(
        lambda: used(admin, keeper) and admin.wait(idler, ready=True, timeout=1),
        600, f"{idler}'s GPU server to be ready", ignoring=(TimeoutError,), interval=5,
    )  # fmt: skip
    service = f"{PREFIX}-{idler}"
    assert wait_for_running_task(swarm, service) == worker.node_id
    [service_id] = [s["ID"] for s in manager.services() if s["Spec"]["Name"] == service]
    # Idle kernels are culled inside the server (KERNEL_IDLE_TIMEOUT), as on one host.
    args = manager.inspect_service(service_id)["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"]
    assert "--MappingKernelManager.cull_idle_timeout=1800" in args, args
    assert admin.holders() == {f"{DEVICE_ID}@{worker.node_id}": [idler]}
    [container] = worker.docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}"
    ).split()
    # Through the engine, not the proxy: no activity the hub sees.
    worker.docker("exec", container, "sh", "-c", "echo kept > /home/jovyan/culled.txt")
    idle_since = last_activity(admin.server(idler) or {})

    # Left idle: stopped by the idle culler within the timeout, one round and one read of
    # the proxy's activity; the keeper, in use all along, stays.
    wait_until(
        lambda: used(admin, keeper) and admin.server(idler) is None,
        IDLE_TIMEOUT_S + CULL_EVERY_S + ACTIVITY_EVERY_S + 60,
        f"the idle culler to stop {idler}'s server",
        interval=5,
    )
    metrics = admin.http.get(f"{stack.base_url}/hub/metrics", timeout=60).text
    assert 'labhub_culls_total{reason="hub-idle"} 1.0' in metrics
    kept = admin.server(keeper) or {}
    assert kept.get("ready") and not kept.get("pending"), kept
    assert last_activity(kept) > idle_since, (kept, idle_since)

    # At the manager's engine: no service, and its tasks go with it.
    assert manager.services(filters={"id": service_id}) == []
    wait_until(
        lambda: [t["ID"] for t in manager.tasks() if t["ServiceID"] == service_id],
        60, f"the tasks of {service} to be removed", done=lambda tasks: not tasks,
    )  # fmt: skip
    # The device is free: the admin's view shows no holder, and another student gets it.
    assert admin.holders() == {f"{DEVICE_ID}@{worker.node_id}": []}
    # The home stays on its node, and the next spawn runs there, with the files.
    worker.docker("volume", "inspect", volume_name_for(idler, STACK))
    admin.start({taker: "gpu-1", idler: "cpu"})
    assert wait_for_running_task(swarm, f"{PREFIX}-{taker}") == worker.node_id
    assert admin.holders() == {f"{DEVICE_ID}@{worker.node_id}": [taker]}
    assert wait_for_running_task(swarm, service) == worker.node_id
    [container] = worker.docker(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}"
    ).split()
    assert worker.docker("exec", container, "cat", "/home/jovyan/culled.txt") == "kept\n"
    admin.stop(keeper, idler, taker)
