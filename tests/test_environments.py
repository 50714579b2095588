"""More than one environment (issue 18), on a real stack: a profile that names the PyTorch
workspace image (on the allow-list WORKSPACE_IMAGES) spawns it through the hub, and the
MNIST LeNet trains there; a student's `pip install --user` survives a server restart in
both environments; the Docker proxy creates containers from the listed images only.

The stack is this module's own (profiles file, WORKSPACE_IMAGES): the session stack's
name + "env", its port + 10.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import uuid
import zipfile
from collections.abc import Iterator

import docker
import pytest
from browser import ARTIFACTS, chromium, needs_chromium, open_the_notebook
from labhub.contract import container_name_prefix
from stacks import HTTPS_PORT as SESSION_HTTPS_PORT
from stacks import STACK as SESSION_STACK
from stacks import USERS_CREATED, VERSION, Stack, launched_stack

from testsupport.containers import user_containers
from testsupport.hubclient import HubClient, Terminal, run_in_kernel

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

STACK, HTTPS_PORT = f"{SESSION_STACK}env", SESSION_HTTPS_PORT + 10
TORCH_IMAGE = f"labhub/workspace-torch:{VERSION}"
WORKSPACE_IMAGE = f"labhub/workspace:{VERSION}"
PROFILES = {
    "profiles": [
        {"slug": "tensorflow", "display_name": "TensorFlow", "description": "the workspace"},
        {"slug": "pytorch", "display_name": "PyTorch", "image": TORCH_IMAGE},
    ]
}
# profile -> (kernel name, display name) of its image
KERNELS = {"tensorflow": ("tensorflow-gpu", "TensorFlow-GPU"), "pytorch": ("pytorch", "PyTorch")}


@pytest.fixture(scope="module")
def env_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = tmp_path_factory.mktemp("env-config")
    (config / "profiles.json").write_text(json.dumps(PROFILES))
    config.chmod(0o755)
    (config / "profiles.json").chmod(0o644)
    extra = {
        "GPU_CONFIG_DIR": str(config),
        "GPU_PROFILES": "/srv/labhub/profiles.json",
        "WORKSPACE_IMAGES": TORCH_IMAGE,
    }
    with launched_stack(tmp_path_factory, STACK, HTTPS_PORT, extra) as running:
        yield running


@pytest.fixture
def student() -> str:
    name = f"env-{uuid.uuid4().hex[:8]}"
    USERS_CREATED.append(name)
    return name


def start(stack: Stack, username: str, profile: str) -> HubClient:
    client = stack.login(username)
    client.start_server(username, options={"profile": profile})
    return client


def run(stack: Stack, client: HubClient, username: str, profile: str, code: str) -> str:
    token = client.new_token(username)
    kernel = KERNELS[profile][0]
    return run_in_kernel(
        stack.base_url, stack.ca_file, username, token, code, timeout=600, kernel_name=kernel
    )


def the_image_of(stack: Stack, username: str) -> str:
    [container] = user_containers(STACK, username)
    return str(container.attrs["Config"]["Image"])


# A tiny wheel, as `pip wheel` makes one: a student's own package, installed with no index.
WHEEL = "labhub_hello-1.0-py3-none-any.whl"


def wheel_bytes() -> bytes:
    files = {
        "labhub_hello.py": "GREETING = 'hello from ~/.local'\n",
        "labhub_hello-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: labhub-hello\n"
        "Version: 1.0\n",
        "labhub_hello-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "labhub_hello-1.0.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, content in {**files, "labhub_hello-1.0.dist-info/RECORD": record}.items():
            wheel.writestr(name, content)
    return buffer.getvalue()


def test_a_pytorch_profile_server_runs_the_mnist_lenet(env_stack: Stack, student: str) -> None:
    client = start(env_stack, student, "pytorch")
    assert the_image_of(env_stack, student) == TORCH_IMAGE
    auth = {"Authorization": f"token {client.new_token(student)}"}
    base = f"{env_stack.base_url}/user/{student}/api"
    specs = client.session.get(f"{base}/kernelspecs", headers=auth, timeout=60).json()
    assert {n: s["spec"]["display_name"] for n, s in specs["kernelspecs"].items()} == {
        "pytorch": "PyTorch"
    }
    # The MNIST notebook is in the home, asking for this image's kernel.
    notebook = client.session.get(f"{base}/contents/mnist/MNIST.ipynb", headers=auth, timeout=60)
    assert notebook.status_code == 200, notebook.text[:300]
    assert notebook.json()["content"]["metadata"]["kernelspec"]["name"] == "pytorch"
    # The seed notebook's LeNet, a short training on the image's offline MNIST, on torch.
    output = run(
        env_stack,
        client,
        student,
        "pytorch",
        "import keras, torch\n"
        "from mnist_workspace import train\n"
        "from mnist_workspace.config import TrainConfig\n"
        "m = train.run(TrainConfig(model='lenet', epochs=1, subset=2000, verbose=0,\n"
        "    model_path='/tmp/lenet.keras', logdir='/tmp/logs')).metrics\n"
        "print('backend', keras.backend.backend(), 'torch', torch.__version__)\n"
        "print('params', m['params'], 'epochs', m['epochs'], 'accuracy', m['test_accuracy'])\n",
    )
    assert "backend torch torch 2." in output
    params, epochs, accuracy = output.split("params ", 1)[1].split()[0::2]
    assert (params, epochs) == ("1199882", "1")
    assert float(accuracy) > 0.7, output  # one epoch on 1,800 images; chance is 0.1
    client.stop_server(student)


@needs_chromium
def test_jupyterlab_opens_the_notebook_on_the_pytorch_kernel(
    env_stack: Stack, student: str
) -> None:
    """In a real browser: the PyTorch server's JupyterLab opens MNIST.ipynb on its own
    kernel (the notebook names it, so no kernel-choice dialog), idle and ready."""
    from playwright.sync_api import expect

    # The server first: a new container changes this host's interfaces, and Chromium drops
    # requests in flight when they change (testsupport.browsing).
    start(env_stack, student, "pytorch")
    with chromium(env_stack) as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        failed: list[str] = []
        page.on(
            "requestfailed",
            lambda request: failed.append(f"{request.method} {request.url}: {request.failure}"),
        )
        try:
            open_the_notebook(env_stack, page, student, "PyTorch")
            expect(page.get_by_text("Select Kernel")).to_have_count(0)
        finally:
            page.screenshot(path=str(ARTIFACTS / "browser-pytorch-jupyterlab.png"))
            (ARTIFACTS / "browser-pytorch-failed-requests.txt").write_text("\n".join(failed))
    env_stack.login(student).stop_server(student)


@pytest.mark.parametrize("profile", ["tensorflow", "pytorch"])
def test_pip_install_user_survives_a_server_restart(
    env_stack: Stack, student: str, profile: str
) -> None:
    """The supported way to add packages (docs/user-guide.md), in both environments: `pip
    install --user` in a terminal goes to ~/.local in the home volume, and the kernel of the
    next server imports it; the server process itself ignores ~/.local."""
    client = start(env_stack, student, profile)
    token = client.new_token(student)
    put = client.session.put(
        f"{env_stack.base_url}/user/{student}/api/contents/{WHEEL}",
        headers={"Authorization": f"token {token}"},
        json={
            "type": "file",
            "format": "base64",
            "content": base64.b64encode(wheel_bytes()).decode(),
        },
        timeout=60,
    )
    assert put.status_code == 201, put.text[:300]
    terminal = Terminal(env_stack.base_url, env_stack.ca_file, student, token)
    try:
        screen = terminal.run(
            f"pip install --user --no-index ~/{WHEEL}; echo installed-$((40 + 2))",
            "installed-42",
        )
    finally:
        terminal.close()
    assert "Successfully installed labhub-hello-1.0" in screen, screen[-2000:]
    client.stop_server(student)

    client.start_server(student, options={"profile": profile})
    output = run(
        env_stack,
        client,
        student,
        profile,
        "import os, labhub_hello\n"
        "print(labhub_hello.GREETING, labhub_hello.__file__)\n"
        "server = [p for p in os.listdir('/proc') if p.isdigit() and b'jupyterhub-singleuser'\n"
        "    in open(f'/proc/{p}/cmdline', 'rb').read()]\n"
        "env = open(f'/proc/{server[0]}/environ', 'rb').read().split(b'\\0')\n"
        "print('server ignores user site', b'PYTHONNOUSERSITE=1' in env)\n",
    )
    assert "hello from ~/.local /home/jovyan/.local/lib/python3" in output, output
    assert "server ignores user site True" in output
    client.stop_server(student)


CREATE_AS_THE_HUB = """
import sys, docker
from labhub.contract import USER_LOG_CONFIG
from labhub.spawner import tmp_options
api = docker.APIClient(base_url="tcp://docker-proxy:2375", version="1.41")
host = api.create_host_config(
    mem_limit=2**30, pids_limit=64, network_mode=sys.argv[3], cap_drop=["ALL"],
    security_opt=["no-new-privileges:true"], cpu_period=100000, cpu_quota=100000,
    read_only=True, tmpfs={"/tmp": tmp_options(2**29)}, log_config=USER_LOG_CONFIG,
)
try:
    api.create_container(image=sys.argv[1], name=sys.argv[2], user="1000:100",
                         labels={"labhub.user": "intruder"}, host_config=host)
    print("created")
except docker.errors.APIError as error:
    print("refused", error.response.status_code, error.explanation)
"""


def test_the_docker_proxy_creates_from_the_listed_images_only(
    env_stack: Stack, student: str
) -> None:
    """As a compromised hub would: creates through the proxy with the hub's own client.
    The listed PyTorch image is created (then removed); any other image is refused and no
    such container exists at the engine."""
    network = env_stack.value("DOCKER_NETWORK")
    hub = env_stack.compose("ps", "-q", "hub").stdout.strip()
    engine = docker.from_env()
    for image, expected in (
        (TORCH_IMAGE, "created"),
        (WORKSPACE_IMAGE, "created"),
        (f"labhub/hub:{VERSION}", "refused 403"),
        ("labhub/workspace-torch:not-listed", "refused 403"),
        ("debian:trixie-slim", "refused 403"),
    ):
        name = f"{container_name_prefix(network)}probe-{uuid.uuid4().hex[:6]}"
        done = subprocess.run(
            ["docker", "exec", hub, "python", "-c", CREATE_AS_THE_HUB, image, name, network],
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            assert done.stdout.startswith(expected), (image, done.stdout, done.stderr)
            found = engine.containers.list(all=True, filters={"name": name})
            assert [c.attrs["Config"]["Image"] for c in found] == (
                [image] if expected == "created" else []
            )
            if expected != "created":
                assert "not an allowed workspace image" in done.stdout
        finally:
            for container in engine.containers.list(all=True, filters={"name": name}):
                container.remove(force=True)


def test_a_profile_naming_an_unlisted_image_stops_the_hub(env_stack: Stack) -> None:
    """The hub image as compose starts it, with this stack's .env and profiles, but the
    PyTorch image left off WORKSPACE_IMAGES: exit 2 and the problem, no traceback. (The
    running stack, with it listed, is the contrast.)"""
    config = env_stack.value("GPU_CONFIG_DIR")
    done = subprocess.run(
        [
            "docker", "run", "--rm", "--network", "none",
            "--env-file", str(env_stack.env_file),
            "-e", f"WORKSPACE_IMAGE={WORKSPACE_IMAGE}", "-e", "WORKSPACE_IMAGES=",
            "-v", f"{config}:/srv/labhub:ro",
            f"labhub/hub:{VERSION}",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        "GPU_PROFILES=/srv/labhub/profiles.json: profile 'pytorch' names the image "
        f"'{TORCH_IMAGE}', which is not on the allow-list ({WORKSPACE_IMAGE}): add it to "
        "WORKSPACE_IMAGES in .env, or name one of those"
    ) in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


NOTEBOOK_IN_THE_IMAGE = """
set -e
cp -r /opt/workspace/mnist /tmp/nb && cd /tmp/nb
jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=900 \
    --output /tmp/nb/run.ipynb MNIST.ipynb 2>/tmp/nbconvert.log ||
    { tail -40 /tmp/nbconvert.log; exit 1; }
python - <<'PY'
import json
notebook = json.load(open("/tmp/nb/run.ipynb"))
print("kernel", notebook["metadata"]["kernelspec"]["name"])
for cell in notebook["cells"]:
    for output in cell.get("outputs", []):
        text = output.get("text", "")
        print("".join(text) if isinstance(text, list) else text, end="")
PY
ls "$MNIST_LOGS_DIR"
"""


def test_the_mnist_notebook_runs_top_to_bottom_in_the_pytorch_image() -> None:
    """The same MNIST.ipynb as the TensorFlow workspace (its kernel renamed at build time),
    on a small subset, with no network: LeNet, the strong recipe and TensorBoard logs."""
    done = subprocess.run(
        [
            "docker", "run", "--rm", "--network", "none",
            "-e", "MNIST_NOTEBOOK_SUBSET=1500", "-e", "MNIST_NOTEBOOK_EPOCHS=1",
            "-e", "MPLBACKEND=Agg", "--entrypoint", "bash", TORCH_IMAGE, "-c",
            NOTEBOOK_IN_THE_IMAGE,
        ],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "kernel pytorch" in done.stdout
    assert "on torch" in done.stdout  # the first cell's "Keras 3.x on torch - ..."
    assert "LeNet test accuracy" in done.stdout and "strong test accuracy" in done.stdout
    assert "notebook-lenet" in done.stdout and "notebook-strong" in done.stdout
