"""GPU allocation end to end: a stack with a declared inventory, real containers, the
engine's own record of each container's device requests.

The only stand-in is NVIDIA's container hook (tests/fake-gpu, on dockerd's PATH): Docker
then registers its "nvidia" device driver and starts containers with `--gpus device=N`.
Where the engine has no such driver these tests skip, saying why.

Inventory and profiles: tests/gpustack.py. The queue is on (GPU_QUEUE=true) with a short
timeout, so a spawn that finds no GPU waits.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import docker
import pytest
import requests
from browser import ARTIFACTS, chromium, needs_chromium
from gpustack import (
    GROUP,
    INVENTORY,
    Admin,
    container_of,
    devices_of,
    env_of,
    gpu_config_dir,
    nvidia_driver_missing,
)
from hypothesis import given
from hypothesis import strategies as st
from labhub.gpu.api import CONTENT_SECURITY_POLICY
from monitoring import NVML_METRICS, dashboard_queries, prometheus_of, query, wait_for_data
from stacks import USERS_CREATED, Stack, launched_stack

from testsupport.browsing import despite_network_changes, network_changed
from testsupport.fuzzing import FUZZ, json_body, segment

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page

pytestmark = pytest.mark.e2e

STACK = os.environ.get("LABHUB_GPU_TEST_STACK", "labhubgpu")
HTTPS_PORT = int(os.environ.get("LABHUB_GPU_TEST_HTTPS_PORT", "19443"))
QUEUE_TIMEOUT = 60


@pytest.fixture(scope="module")
def gpu_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = nvidia_driver_missing()
    if reason:
        pytest.skip(reason)
    config = gpu_config_dir(tmp_path_factory.mktemp("gpu-config"))
    extra = {
        "GPU_CONFIG_DIR": str(config),
        "GPU_INVENTORY": "/srv/labhub/gpus.json",
        "GPU_PROFILES": "/srv/labhub/profiles.json",
        "GPU_QUEUE": "true",
        "GPU_QUEUE_TIMEOUT": str(QUEUE_TIMEOUT),
        "CONCURRENT_SPAWN_LIMIT": "40",
        # A quota no test reaches, so that the quota panel of the dashboard has data.
        "GPU_QUOTA_GROUP_HOURS": json.dumps({GROUP: 1000}),
    }
    with launched_stack(tmp_path_factory, STACK, HTTPS_PORT, extra) as running:
        yield running


@pytest.fixture(scope="module")
def admin(gpu_stack: Stack) -> Admin:
    return Admin(gpu_stack)


@pytest.fixture
def engine() -> Iterator[docker.DockerClient]:
    client = docker.from_env()
    yield client
    client.close()


def in_stack(engine: docker.DockerClient, name: str) -> dict[str, Any]:
    """`docker inspect` of the user's container in this module's stack."""
    return container_of(engine, STACK, name)


# --- the tests -----------------------------------------------------------------------


def test_containers_get_exactly_their_devices_and_release_them_on_stop(
    admin: Admin, engine: docker.DockerClient
) -> None:
    whole, shared, cpu = admin.users(3, gpu_group=True)
    admin.start({whole: "gpu-1", shared: "gpu-shared", cpu: "cpu"})

    holders = admin.holders()
    whole_box = in_stack(engine, whole)
    [device] = devices_of(whole_box)
    assert device in ("0", "1")
    [request] = whole_box["HostConfig"]["DeviceRequests"]
    assert request["Capabilities"] == [["gpu"]] and request["Count"] == 0
    assert env_of(whole_box)["NVIDIA_VISIBLE_DEVICES"] == device
    assert "GPU_MEMORY_LIMIT_MB" not in env_of(whole_box)
    assert holders[device] == [whole]

    shared_box = in_stack(engine, shared)
    assert devices_of(shared_box) == ["2"]
    assert env_of(shared_box)["NVIDIA_VISIBLE_DEVICES"] == "2"
    assert env_of(shared_box)["GPU_MEMORY_LIMIT_MB"] == "4096"
    assert holders["2"] == [shared]

    cpu_box = in_stack(engine, cpu)
    assert devices_of(cpu_box) == []
    assert env_of(cpu_box)["NVIDIA_VISIBLE_DEVICES"] == "void"
    # The profile's limits reach the engine too.
    host = cpu_box["HostConfig"]
    assert host["CpuQuota"] / host["CpuPeriod"] == 1
    assert host["Memory"] == 2 * 1024**3

    admin.stop(whole, shared, cpu)
    assert admin.holders() == {"0": [], "1": [], "2": []}
    entries = admin.gpus("GET", "audit").json()["entries"]
    released = {e["detail"]["holder"] for e in entries if e["action"] == "release"}
    assert {whole, shared} <= released


def test_a_profile_outside_the_users_groups_is_refused_with_a_reason(
    gpu_stack: Stack, admin: Admin
) -> None:
    # The spawn page offers a member of `gpu` every profile, with the free devices...
    [member] = admin.users(1, gpu_group=True)
    page = gpu_stack.login(member).session.get(gpu_stack.base_url + "/hub/spawn", timeout=60)
    assert page.status_code == 200
    assert "CPU only" in page.text and "One whole GPU" in page.text
    assert "(2 free now)" in page.text  # two exclusive GPUs; the shared one has 2 slots too
    # ...while a student outside it has only the CPU profile, so no form at all (the
    # spawn page would start it at once), and every other profile is refused by name.
    [student] = admin.users(1, gpu_group=False)
    client = gpu_stack.login(student)  # lands on /hub/spawn: starts the CPU server
    server = admin.server(student)
    assert server is not None
    admin.stop(student)
    refused = client.api("POST", f"/users/{student}/server", json={"profile": "gpu-1"})
    assert refused.status_code == 403, refused.text
    message = refused.json()["message"]
    assert "profile 'gpu-1' is only for members of the group(s) gpu" in message
    assert "choose one of: cpu" in message
    unknown = client.api("POST", f"/users/{student}/server", json={"profile": "gpu-9"})
    assert unknown.status_code == 400 and "there is no profile 'gpu-9'" in unknown.text
    # Through the spawn form as well.
    form = client.session.post(
        gpu_stack.base_url + f"/hub/spawn/{student}",
        data={"profile": "gpu-1", "_xsrf": client.xsrf()},
        timeout=60,
    )
    assert "only for members of the group(s) gpu" in form.text
    assert client.api("GET", f"/users/{student}").json()["servers"] == {}


def test_non_admins_get_403_from_the_gpu_service(gpu_stack: Stack, admin: Admin) -> None:
    [student] = admin.users(1, gpu_group=True)
    client = gpu_stack.login(student)
    token = client.new_token(student)
    for path in ("api/devices", "api/usage", "api/audit"):
        url = f"{gpu_stack.base_url}/services/gpus/{path}"
        # With the student's API token...
        response = client.session.get(url, headers={"Authorization": f"token {token}"})
        assert response.status_code == 403, (path, response.status_code)
        # ...and with the student's browser session (through the hub's OAuth).
        response = client.session.get(url, allow_redirects=True, timeout=60)
        assert response.status_code == 403, (path, response.status_code, response.url)
    # The admin page sends a student (the hub's Services menu) to their own GPU page.
    mine = client.session.get(f"{gpu_stack.base_url}/services/gpus/", timeout=60)
    assert mine.url == f"{gpu_stack.base_url}/services/gpus/me", mine.url
    assert mine.status_code == 200 and "My GPU session" in mine.text
    assert "Test A100" not in mine.text and "revoke" not in mine.text
    # No nvidia-smi in this hub: the utilisation rule is off, and the page says why.
    assert "No stop for an idle GPU here: no NVML (nvidia-smi) on this host." in mine.text
    revoke = client.session.post(
        f"{gpu_stack.base_url}/services/gpus/api/devices/0/drain",
        headers={"Authorization": f"token {token}"},
        json={"drained": True},
    )
    assert revoke.status_code == 403
    # An admin gets the page; no nvidia-smi in this hub: the utilisation rule is off, and
    # the page says why.
    page = admin.http.get(f"{gpu_stack.base_url}/services/gpus/", timeout=60)
    assert page.status_code == 200 and "Test A100" in page.text
    assert "utilisation rule off: no NVML (nvidia-smi) on this host" in page.text


def test_the_hub_sees_every_gpu_for_nvidia_smi_only(
    gpu_stack: Stack, engine: docker.DockerClient
) -> None:
    """GPU_INVENTORY set on one host: `make up` gives the hub's container every GPU with
    the `utility` capability alone (compose/gpu-hub.yml), which is what lets nvidia-smi run
    there on a real GPU host (GPU_INVENTORY=auto, the utilisation figures and rule). Read at
    the engine: the stand-in hook here mounts no nvidia-smi."""
    hub = engine.containers.get(f"{STACK}-hub-1").attrs
    [request] = hub["HostConfig"]["DeviceRequests"]
    assert request["Driver"] == "nvidia" and request["Count"] == -1, request
    assert request["Capabilities"] == [["utility"]] and not request["DeviceIDs"], request


def test_twenty_users_at_once_never_double_book(admin: Admin, engine: docker.DockerClient) -> None:
    names = admin.users(20, gpu_group=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda n: admin.spawn(n, "gpu-1").status_code, names))
    assert set(answers) <= {201, 202}, answers

    # Sample the engine while the spawns settle: never two containers on one device.
    deadline = time.monotonic() + QUEUE_TIMEOUT + 120
    ready: list[str] = []
    while time.monotonic() < deadline:
        boxes = [
            c.attrs
            for c in engine.containers.list(all=True, filters={"name": f"{STACK}-user-gpu-"})
            if c.labels.get("labhub.user") in names
        ]
        booked = [d for box in boxes for d in devices_of(box)]
        assert len(booked) == len(set(booked)), f"double-booked: {sorted(booked)}"
        assert set(booked) <= {"0", "1"}
        states = {n: admin.server(n) for n in names}
        ready = [n for n, s in states.items() if s and s.get("ready")]
        if len(ready) == 2 and all(s is None or s.get("ready") for s in states.values()):
            break
        time.sleep(2)
    else:
        raise AssertionError(f"spawns did not settle: {ready}")

    waited = next(n for n in names if n not in ready)
    assert admin.server(waited) is None
    holders = admin.holders()
    assert sorted(holders["0"] + holders["1"]) == sorted(ready)
    assert {devices_of(in_stack(engine, n))[0] for n in ready} == {"0", "1"}
    # The 18 others waited in the queue for GPU_QUEUE_TIMEOUT, then were refused; none
    # left a container or a place in the queue behind.
    assert admin.gpus("GET", "devices").json()["queue"] == []
    assert not [
        c for c in engine.containers.list(all=True) if c.labels.get("labhub.user") == waited
    ]
    admin.stop(*ready)
    assert admin.holders()["0"] == admin.holders()["1"] == []


def test_hub_restart_keeps_every_assignment(
    gpu_stack: Stack, admin: Admin, engine: docker.DockerClient
) -> None:
    first, second, third = admin.users(3, gpu_group=True)
    admin.start({first: "gpu-1", second: "gpu-1", third: "gpu-shared"})
    before = admin.holders()
    boxes = {n: in_stack(engine, n)["Id"] for n in (first, second, third)}

    gpu_stack.compose("restart", "hub")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if admin.gpus("GET", "devices").status_code == 200 and admin.server(first):
                break
        time.sleep(2)

    assert admin.holders() == before
    for name, box in boxes.items():
        assert admin.server(name)["ready"], name
        assert in_stack(engine, name)["Id"] == box
    # Nothing was freed: the next whole-GPU spawn finds both exclusive GPUs busy and waits.
    [late] = admin.users(1, gpu_group=True)
    assert admin.spawn(late, "gpu-1").status_code == 202
    message = admin.progress(late, until=lambda m: "in the queue" in m)
    assert "number 1 in the queue" in message
    # When a holder stops, the waiting spawn gets its GPU.
    freed = devices_of(in_stack(engine, first))
    admin.stop(first)
    admin.wait(late, ready=True, timeout=QUEUE_TIMEOUT + 120)
    assert devices_of(in_stack(engine, late)) == freed
    admin.stop(late, second, third)
    assert admin.holders() == {"0": [], "1": [], "2": []}
    actions = [e["action"] for e in admin.gpus("GET", "audit?limit=50").json()["entries"]]
    assert "adopt" not in actions  # the record matched the containers: nothing to fix


def test_queued_spawn_gets_the_gpu_an_admin_revokes(
    admin: Admin, engine: docker.DockerClient
) -> None:
    first, second, waiting = admin.users(3, gpu_group=True)
    for name in (first, second):
        assert admin.spawn(name, "gpu-1").status_code in (201, 202)
        admin.wait(name, ready=True)
    taken = devices_of(in_stack(engine, first))

    assert admin.spawn(waiting, "gpu-1").status_code == 202
    message = admin.progress(waiting, until=lambda m: "in the queue" in m)
    assert message == "Waiting for 1 whole GPU: number 1 in the queue"
    queue = admin.gpus("GET", "devices").json()["queue"]
    assert [q["holder"] for q in queue] == [waiting]
    assert admin.server(waiting)["pending"] == "spawn"

    revoke = admin.gpus("POST", f"holders/{first}/revoke", json={})
    assert revoke.status_code in (200, 202), revoke.text
    admin.wait(first, ready=False, timeout=120)
    admin.wait(waiting, ready=True, timeout=QUEUE_TIMEOUT + 120)
    assert devices_of(in_stack(engine, waiting)) == taken
    assert admin.holders()[taken[0]] == [waiting]
    entries = admin.gpus("GET", "audit?limit=50").json()["entries"]
    assert any(e["action"] == "revoke" and e["detail"]["holder"] == first for e in entries)
    admin.stop(second, waiting)


def test_a_killed_container_frees_its_gpu(admin: Admin, engine: docker.DockerClient) -> None:
    [name] = admin.users(1, gpu_group=True)
    admin.start({name: "gpu-1"})
    box = in_stack(engine, name)
    [device] = devices_of(box)
    assert admin.holders()[device] == [name]

    subprocess.run(["docker", "kill", box["Id"]], check=True, capture_output=True)
    # The hub polls its servers (every 30 s): it notices, stops the server, frees the GPU.
    admin.wait(name, ready=False, timeout=120)
    deadline = time.monotonic() + 30
    while admin.holders()[device] and time.monotonic() < deadline:
        time.sleep(1)
    assert admin.holders()[device] == []
    # Nothing dead is left holding the device on the engine either.
    assert not engine.containers.list(all=True, filters={"label": f"labhub.user={name}"})
    entries = admin.gpus("GET", "audit?limit=20").json()["entries"]
    assert any(e["action"] == "release" and e["detail"]["holder"] == name for e in entries)


# --- the admin page in a real browser -----------------------------------------------

# A name the hub accepts: in the old page's onclick attribute it ran as script.
QUOTING_NAME = 'q");document.title="xss";("'
# Reports each title a document takes to the test (window.seenTitle, exposed by Playwright).
TITLE_WATCH = """
let last = null;
new MutationObserver(() => {
  if (document.title !== last) window.seenTitle((last = document.title));
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@contextlib.contextmanager
def chromium_page(stack: Stack, name: str) -> Iterator[Page]:
    """A fresh page in Debian's Chromium (tests/browser.py), closed afterwards; its last
    view and every failed request are kept in test-artifacts/NAME.png and NAME-failed.txt."""
    from playwright.sync_api import Error

    failed: list[str] = []
    with chromium(stack) as browser:
        page = browser.new_page()
        page.on("requestfailed", lambda r: failed.append(f"{r.method} {r.url}: {r.failure}"))
        page.on(
            "response",
            lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        try:
            yield page
        finally:
            (ARTIFACTS / f"{name}-failed.txt").write_text("\n".join(failed))
            # Best effort: a page stuck (e.g. in a dialog) must not hide the test's error.
            with contextlib.suppress(Error):
                page.screenshot(path=str(ARTIFACTS / f"{name}.png"), timeout=10_000)


def console_errors(message: ConsoleMessage) -> list[str]:
    """A console error (a refused inline script among them), except the favicon's 404 and
    requests Chromium aborted for a network change (see despite_network_changes)."""
    favicon = message.location.get("url", "").endswith("/favicon.ico")
    network_change = network_changed(message.text)
    return [message.text] if message.type == "error" and not (favicon or network_change) else []


@needs_chromium
def test_admin_page_in_a_browser_revokes_a_quoting_holder_without_running_its_name(
    gpu_stack: Stack, admin: Admin, engine: docker.DockerClient
) -> None:
    from playwright.sync_api import expect

    USERS_CREATED.append(QUOTING_NAME)
    created = admin.hub("POST", "/users", json={"usernames": [QUOTING_NAME]})
    assert created.status_code == 201, created.text
    added = admin.hub("POST", f"/groups/{GROUP}/users", json={"users": [QUOTING_NAME]})
    if added.status_code == 404:  # no test made the group yet
        assert admin.hub("POST", f"/groups/{GROUP}").status_code == 201
        added = admin.hub("POST", f"/groups/{GROUP}/users", json={"users": [QUOTING_NAME]})
    assert added.status_code == 200, added.text
    admin.start({QUOTING_NAME: "gpu-1"})
    [device] = devices_of(in_stack(engine, QUOTING_NAME))
    assert admin.holders()[device] == [QUOTING_NAME]

    with chromium_page(gpu_stack, "gpu-admin-page") as page:
        dialogs: list[str] = []
        errors: list[str] = []
        titles: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.extend(console_errors(message)))
        # Every title any page ever has, however briefly (the driver's script, not the page's).
        page.expose_function("seenTitle", lambda title: titles.append(title))
        page.add_init_script(TITLE_WATCH)
        gpu_stack.browser_login(page, gpu_stack.admins[0], next_url="/hub/home")
        # Through the service's OAuth login (redirect to the hub, callback) to the page.
        response = despite_network_changes(
            lambda: page.goto(gpu_stack.base_url + "/services/gpus/")
        )
        assert response is not None and response.status == 200, response and response.status
        csp = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'self'" in csp, csp
        # Sent by the service, and by nginx for every answer: twice, both nosniff.
        nosniff = response.header_values("x-content-type-options")
        assert nosniff and set(nosniff) == {"nosniff"}, nosniff
        expect(page.locator("body")).to_contain_text("Test A100")
        expect(page.locator("body")).to_contain_text(QUOTING_NAME)

        revoke = page.get_by_role("button", name=f"revoke {QUOTING_NAME}")
        for _ in range(5):
            with page.expect_request(lambda request: "/api/holders/" in request.url) as sent:
                revoke.click()
            answer = sent.value.response()
            if answer is not None or admin.stopping(QUOTING_NAME):
                break
            # Chromium dropped the request before it left (see despite_network_changes):
            # the page shows the error and keeps its button; a person clicks again.
        if answer is not None:
            page.wait_for_load_state()  # the page reloads after the action
        assert "xss" not in titles and page.title() == "GPUs", titles
        assert dialogs == [] and errors == [], (dialogs, errors)
        assert sent.value.url.endswith("/revoke"), sent.value.url
        if answer is None:
            # It reached the hub, but Chromium dropped it while it waited for the answer
            # (a container stopping changes this host's interfaces too).
            assert network_changed(sent.value.failure or ""), sent.value.failure
        else:
            assert answer.status in (200, 202), answer.text()

    # The revoke really happened: the server stopped, its container went, the GPU is free.
    admin.wait(QUOTING_NAME, ready=False, timeout=120)
    assert not engine.containers.list(all=True, filters={"label": f"labhub.user={QUOTING_NAME}"})
    assert admin.holders()[device] == []
    entries = admin.gpus("GET", "audit?limit=20").json()["entries"]
    assert any(
        e["action"] == "revoke" and e["actor"] == "admin" and e["detail"]["holder"] == QUOTING_NAME
        for e in entries
    )


GPU_API_ROUTES = [
    ("GET", "devices"),
    ("GET", "usage"),
    ("GET", "audit?limit={}"),
    ("POST", "devices/{}/reserve"),
    ("POST", "devices/{}/drain"),
    ("POST", "holders/{}/revoke"),
    ("POST", "quota/{}/topup"),
    ("POST", "quota/{}/reset"),
    ("PUT", "devices/{}"),
    ("DELETE", "{}"),
]
# Real device ids and subjects as well as random ones; holders are never real users
# (segment starts with "fz"), so revoke never stops a server.
gpu_target = st.sampled_from(["0", "1", "2", "user:fz", "group:fz", "-1"]) | segment


@pytest.fixture
def device_state_restored(admin: Admin) -> Iterator[None]:
    """The fuzzer reserves and drains real devices: undo that for the tests after it."""
    yield
    for device in INVENTORY["devices"]:
        assert admin.gpus("POST", f"devices/{device['id']}/reserve", json={}).status_code == 200
        drained = {"drained": False}
        assert admin.gpus("POST", f"devices/{device['id']}/drain", json=drained).status_code == 200


@FUZZ
@given(
    route=st.sampled_from(GPU_API_ROUTES),
    target=gpu_target,
    payload=json_body(["user", "group", "drained", "hours"]),
)
def test_gpu_admin_api_fuzz_never_5xx(
    admin: Admin, device_state_restored: None, route: tuple[str, str], target: str, payload: bytes
) -> None:
    method, template = route
    path = template.format(quote(target, safe=":"))
    response = admin.gpus(
        method, path, data=payload, headers={"Content-Type": "application/json"},
        allow_redirects=False,
    )  # fmt: skip
    assert response.status_code < 500, (method, path, payload[:200], response.text[:300])
    # The service's own answers (they carry its CSP) explain themselves in JSON; nginx
    # refuses some paths itself (a NUL byte: its HTML 400) before the service sees them.
    if response.headers.get("Content-Security-Policy") == CONTENT_SECURITY_POLICY:
        assert "message" in response.json() or response.ok, (method, path, response.text[:300])
    else:
        assert response.status_code == 400 and "nginx" in response.text, (method, path)


def test_prometheus_scrapes_the_gpu_service_and_every_gpu_panel_has_data(
    gpu_stack: Stack, admin: Admin
) -> None:
    """MONITORING on the GPU stack: its Prometheus reads the GPU service with the metrics
    token, and every GPU panel of the dashboard has data once a student holds a GPU
    (the NVML panels only need a valid query: no NVML on this host)."""
    token = gpu_stack.value("PROMETHEUS_API_TOKEN")
    url = f"{gpu_stack.base_url}/services/gpus/metrics"
    refused = requests.get(url, verify=gpu_stack.ca_file, timeout=30)
    assert refused.status_code == 403 and "labhub_gpu" not in refused.text
    [name] = admin.users(1, gpu_group=True)
    admin.start({name: "gpu-1"})
    try:
        scraped = requests.get(
            url, headers={"Authorization": f"Bearer {token}"}, verify=gpu_stack.ca_file, timeout=30
        )
        assert scraped.status_code == 200
        assert 'labhub_gpu_holders{device="0",model="Test A100"}' in scraped.text
        with prometheus_of(gpu_stack) as prometheus:
            assert wait_for_data(prometheus, ['up{job="labhub-gpus"} == 1']) == []
            queries = dashboard_queries(gpu=True)
            measured = [q for q in queries if not any(m in q for m in NVML_METRICS)]
            assert wait_for_data(prometheus, measured) == []
            for nvml in set(queries) - set(measured):
                query(prometheus, nvml)  # Prometheus accepts it; no data without NVML
            held = query(prometheus, "sum(labhub_gpu_holders)")
            assert float(held[0]["value"][1]) >= 1
    finally:
        admin.stop(name)


def test_make_up_applies_an_edited_profiles_file_and_otherwise_leaves_the_hub_running(
    gpu_stack: Stack, admin: Admin, engine: docker.DockerClient
) -> None:
    """docs/gpus.md: edit the files in GPU_CONFIG_DIR, then `make up`. The hub reads them
    only when it starts, so `make up` recreates it when a file there changed (their hash
    is its label), and with nothing changed leaves it running."""
    config = Path(gpu_stack.value("GPU_CONFIG_DIR"))

    def hub() -> str:
        return gpu_stack.compose("ps", "--quiet", "hub").stdout.strip()

    def up() -> None:
        done = gpu_stack.make("up", "BUILD=no", check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Since the last make up (compose run by hand, as prometheus_of does, drops the labels).
    up()
    before = hub()
    up()
    assert hub() == before
    [name] = admin.users(1, gpu_group=False)
    unknown = admin.spawn(name, "cpu-small")
    assert unknown.status_code == 400 and "there is no profile 'cpu-small'" in unknown.text
    profiles = json.loads((config / "profiles.json").read_text())
    small = {"slug": "cpu-small", "display_name": "Small CPU", "cpu_limit": 1, "mem_limit": "1G"}
    (config / "profiles.json").write_text(json.dumps({"profiles": [*profiles["profiles"], small]}))
    up()
    assert hub() != before
    assert admin.spawn(name, "cpu-small").status_code in (201, 202)
    try:
        admin.wait(name, ready=True)
        assert in_stack(engine, name)["HostConfig"]["Memory"] == 1024**3
    finally:
        admin.stop(name)
