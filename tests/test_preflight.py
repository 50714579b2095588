"""`make up`'s preflight (scripts/preflight.sh): every missing piece is listed at once with
its fix, before anything of labhub is created; as root on Debian it installs Docker the way
CI does. Unit tests run it with fake `docker`, `ss`, `df`, `id` and `apt-get` on PATH; the
integration tests run it on this machine's real engine and ports."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from stacks import REPO, Stack, run_make

from testsupport.dockerproxy import free_port

PREFLIGHT = REPO / "scripts" / "preflight.sh"
SETTINGS = {
    "HTTP_PORT": "80",
    "HTTPS_PORT": "443",
    "BIND_ADDRESS": "0.0.0.0",
    "STACK_NAME": "labhub",
    "BASE_IMAGE": "debian:trixie-slim",
    "WORKSPACE_IMAGE": "labhub/workspace:0.1.0",
    "TENSORFLOW_PACKAGE": "tensorflow[and-cuda]==2.21.0",
}


@dataclass(frozen=True)
class Host:
    """What the fake tools report."""

    docker: str = "up"  # up | down | denied (socket not ours) | absent (no docker CLI)
    compose: bool = True
    root: bool = False
    listening: tuple[str, ...] = ()  # local addresses of listening sockets, as ss prints them
    stack_ports: tuple[int, ...] = ()  # host ports this stack's own containers publish
    free_gb: int = 100
    images: tuple[str, ...] = ("debian:trixie-slim",)
    registry: bool = True
    debootstrap: bool = True
    openssl: bool = True
    settings: dict[str, str] = field(default_factory=dict)


def fake(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def fake_docker(bin_dir: Path, state: Path, host: Host) -> None:
    """A docker CLI whose engine and Compose plugin are "there" while a state file exists,
    so that the fake start-docker.sh can bring them up."""
    stack_ports = " ".join(f"publish={port}" for port in host.stack_ports)
    refusal = (
        "permission denied while trying to connect to the Docker daemon socket"
        if host.docker == "denied"
        else "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"
    )
    fake(
        bin_dir,
        "docker",
        f'state={state}\nroot_dir={state}\nimages="{" ".join(host.images)}"\n'
        'case "$1 $2" in\n'
        "  info*|version*)\n"
        f'    [ -e "$state/engine" ] || {{ echo "{refusal}" >&2; exit 1; }}\n'
        '    case "$*" in *DockerRootDir*) echo "$root_dir" ;; *) echo 27.5.1 ;; esac ;;\n'
        '  "compose version") [ -e "$state/compose" ] && echo 2.30.0 ;;\n'
        '  "image inspect") for i in $images; do [ "$i" = "$3" ] && exit 0; done; exit 1 ;;\n'
        f'  "pull -q") exit {0 if host.registry else 1} ;;\n'
        '  "ps -q")\n'
        '    case "$*" in *"label=com.docker.compose.project=labhub"*) ;; *) exit 0 ;; esac\n'
        f"    for p in {stack_ports or 'none'}; do\n"
        '      case " $* " in *" $p "*) echo 0123456789ab ;; esac\n'
        "    done ;;\n"
        '  *) echo "fake docker: unexpected $*" >&2; exit 1 ;;\n'
        "esac\n",
    )


def run_preflight(tmp_path: Path, host: Host) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run a copy of preflight.sh next to a fake start-docker.sh; returns the run and the
    folder where the fakes record what they were asked to do."""
    state = tmp_path / "state"
    scripts = tmp_path / "scripts"
    bin_dir = tmp_path / "bin"
    for folder in (state, scripts, bin_dir):
        folder.mkdir()
    shutil.copy(PREFLIGHT, scripts / "preflight.sh")
    fake(
        scripts,
        "start-docker.sh",
        f"echo called >>{state}/start-docker.calls\ntouch {state}/engine {state}/compose\n",
    )
    if host.docker == "up":
        (state / "engine").touch()
    if host.compose:
        (state / "compose").touch()
    if host.docker != "absent":
        fake_docker(bin_dir, state, host)
    fake(
        bin_dir, "id", f'case "$1" in -u) echo {0 if host.root else 1000} ;; *) echo ada ;; esac\n'
    )
    listeners = "".join(f"echo 'LISTEN 0 4096 {a} 0.0.0.0:*'\n" for a in host.listening)
    fake(bin_dir, "ss", listeners or "true\n")
    fake(
        bin_dir,
        "df",
        "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        f"echo '/dev/x 999999999 1 {host.free_gb * 1024 * 1024} 1% /'\n",
    )
    # apt-get install PACKAGE puts a (fake) command of that name on PATH.
    fake(
        bin_dir,
        "apt-get",
        f'echo "$*" >>{state}/apt-get.calls\n'
        f'case "$*" in *install*) for p; do :; done; echo true >{bin_dir}/$p;'
        f" chmod +x {bin_dir}/$p ;; esac\n",
    )
    for tool in ("debootstrap", "openssl"):
        if getattr(host, tool):
            fake(bin_dir, tool, "true\n")
    # Only the fakes and the basic tools; never the host's own docker, ss or id.
    basics = tmp_path / "basics"
    basics.mkdir()
    for tool in ("bash", "sh", "grep", "awk", "dirname", "timeout", "touch", "chmod"):
        for folder in ("/usr/bin", "/bin"):
            if os.path.exists(f"{folder}/{tool}"):
                (basics / tool).symlink_to(f"{folder}/{tool}")
                break
    result = subprocess.run(
        ["bash", str(scripts / "preflight.sh")],
        env={"PATH": f"{bin_dir}:{basics}", **SETTINGS, **host.settings},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, state


def calls(state: Path, tool: str) -> list[str]:
    log = state / f"{tool}.calls"
    return log.read_text().splitlines() if log.exists() else []


def on_debian() -> bool:
    text = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    return "debian" in text or "ubuntu" in text


NOT_READY = "make up: this machine is missing what the platform needs"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (
            Host(docker="down"),
            ["Docker engine: not answering", "fix: sudo scripts/start-docker.sh"],
        ),
        (Host(docker="absent"), ["Docker is not installed", "fix: sudo scripts/start-docker.sh"]),
        (Host(docker="denied"), ["may not use", "fix: sudo usermod -aG docker ada"]),
        (Host(compose=False), ["Docker Compose v2 plugin", "fix: sudo scripts/start-docker.sh"]),
        (Host(openssl=False), ["openssl is not installed", "fix: sudo apt-get install openssl"]),
        (Host(listening=("0.0.0.0:443",)), ["port 443 (HTTPS_PORT) on 0.0.0.0 is taken"]),
        (
            Host(listening=("[::]:80",), settings={"BIND_ADDRESS": "127.0.0.1"}),
            ["port 80 (HTTP_PORT) on 127.0.0.1 is taken: something listens on :::80"],
        ),
        (
            Host(listening=("10.0.0.5:443",)),
            ["port 443 (HTTPS_PORT) on 0.0.0.0 is taken", "set HTTPS_PORT to a free port"],
        ),
        (Host(free_gb=8), ["disk: 8 GB free", "the images (CUDA workspace) need 12 GB"]),
        (
            Host(free_gb=4, settings={"TENSORFLOW_PACKAGE": "tensorflow-cpu==2.21.0"}),
            ["disk: 4 GB free", "the images (CPU-only workspace) need 6 GB"],
        ),
        (
            Host(
                free_gb=12,
                settings={
                    "TENSORFLOW_PACKAGE": "tensorflow-cpu==2.21.0",
                    "TORCH_IMAGES": "labhub/workspace-torch:0.1.0",
                },
            ),
            [
                "disk: 12 GB free",
                "the images (CPU-only workspace) and labhub/workspace-torch:0.1.0 need 16 GB",
            ],
        ),
        (
            Host(images=(), registry=False, debootstrap=False),
            ["debootstrap: debian:trixie-slim is not in the engine", "sudo apt-get install"],
        ),
    ],
    ids=[
        "engine-down",
        "docker-absent",
        "socket-denied",
        "compose-missing",
        "openssl-missing",
        "port-taken-wildcard",
        "port-taken-ipv6-wildcard",
        "port-taken-on-another-address",
        "disk-low-cuda",
        "disk-low-cpu",
        "disk-low-torch",
        "no-registry-no-debootstrap",
    ],
)
def test_each_missing_piece_is_named_with_its_fix(
    tmp_path: Path, host: Host, expected: list[str]
) -> None:
    result, state = run_preflight(tmp_path, host)
    assert result.returncode == 2, result.stderr
    assert NOT_READY in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert calls(state, "start-docker") == [] and calls(state, "apt-get") == []


@pytest.mark.unit
@pytest.mark.parametrize(
    "host",
    [
        Host(),
        Host(root=True),
        Host(listening=("0.0.0.0:443", "0.0.0.0:80"), stack_ports=(80, 443)),
        Host(listening=("127.0.0.1:443",), settings={"BIND_ADDRESS": "10.0.0.5"}),
        Host(free_gb=8, settings={"TENSORFLOW_PACKAGE": "tensorflow-cpu==2.21.0"}),
        Host(free_gb=3, images=("debian:trixie-slim", "labhub/workspace:0.1.0")),
        Host(images=(), registry=True, debootstrap=False),
    ],
    ids=[
        "all-good",
        "all-good-as-root-engine-left-alone",
        "ports-held-by-this-stack",
        "port-busy-on-another-address-only",
        "cpu-image-fits",
        "rebuild-fits",
        "base-image-pullable",
    ],
)
def test_a_ready_machine_passes_untouched(tmp_path: Path, host: Host) -> None:
    result, state = run_preflight(tmp_path, host)
    assert result.returncode == 0, result.stderr
    assert "[preflight] ok: Docker 27.5.1, Compose 2.30.0" in result.stderr
    assert calls(state, "start-docker") == [] and calls(state, "apt-get") == []


@pytest.mark.unit
def test_every_missing_piece_is_listed_in_one_message(tmp_path: Path) -> None:
    host = Host(docker="down", listening=("0.0.0.0:80", "0.0.0.0:443"))
    result, _ = run_preflight(tmp_path, host)
    assert result.returncode == 2
    assert result.stderr.count(NOT_READY) == 1
    items = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(items) == 3, result.stderr
    assert result.stderr.count("      fix: ") == 3


@pytest.mark.unit
@pytest.mark.skipif(not on_debian(), reason="the install path is for Debian and Ubuntu")
@pytest.mark.parametrize(
    "host",
    [Host(docker="down", root=True), Host(compose=False, root=True)],
    ids=["engine-down", "compose-missing"],
)
def test_root_on_debian_installs_docker_the_way_ci_does(tmp_path: Path, host: Host) -> None:
    result, state = run_preflight(tmp_path, host)
    assert calls(state, "start-docker") == ["called"]
    assert result.returncode == 0, result.stderr


@pytest.mark.unit
@pytest.mark.skipif(not on_debian(), reason="the install path is for Debian and Ubuntu")
@pytest.mark.parametrize(
    ("host", "package"),
    [
        (Host(root=True, images=(), registry=False, debootstrap=False), "debootstrap"),
        (Host(root=True, openssl=False), "openssl"),
    ],
    ids=["debootstrap-when-no-registry", "openssl"],
)
def test_root_on_debian_installs_missing_packages(tmp_path: Path, host: Host, package: str) -> None:
    result, state = run_preflight(tmp_path, host)
    assert calls(state, "apt-get") == ["update -qq", f"install -y -qq {package}"]
    assert result.returncode == 0, result.stderr


# --- The real machine ------------------------------------------------------------------


@pytest.fixture
def env_file(tmp_path: Path) -> Iterator[Path]:
    """A settings file for loopback ports nobody uses, and a certificate folder of its own."""
    path = tmp_path / "test.env"
    path.write_text(
        f"HTTP_PORT={free_port()}\nHTTPS_PORT={free_port()}\nBIND_ADDRESS=127.0.0.1\n"
        f"STACK_NAME=preflighttest\nCERTS_DIR={tmp_path / 'certs'}\n"
        "TENSORFLOW_PACKAGE=tensorflow-cpu==2.21.0\n"
    )
    yield path


@pytest.mark.integration
def test_this_machine_passes(env_file: Path) -> None:
    result = run_make("-s", "preflight", env_file=env_file, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "[preflight] ok: Docker " in result.stderr


@pytest.mark.integration
def test_make_up_stops_on_a_taken_port_before_changing_anything(env_file: Path) -> None:
    before = env_file.read_text()
    port = int(before.split("HTTPS_PORT=")[1].split()[0])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = run_make("-s", "up", env_file=env_file, timeout=180)
    assert result.returncode != 0
    assert f"port {port} (HTTPS_PORT) on 127.0.0.1 is taken" in result.stderr, result.stderr
    assert env_file.read_text() == before  # no secrets generated: `make env` never ran
    assert not (env_file.parent / "certs").exists()  # nor `make certs`


@pytest.mark.e2e
def test_make_up_again_on_the_running_stack_passes_but_another_stack_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    """The stack holds HTTP_PORT and HTTPS_PORT: `make up` again must not refuse them; the
    same ports for a stack of another name must be refused."""
    again = stack.make("-s", "preflight", check=False)
    assert again.returncode == 0, again.stderr
    other = tmp_path / "other.env"
    other.write_text(
        stack.env_file.read_text().replace(
            f"STACK_NAME={stack.value('STACK_NAME')}\n", "STACK_NAME=someoneelse\n"
        )
    )
    refused = run_make("-s", "preflight", env_file=other, timeout=180)
    assert refused.returncode == 2, refused.stderr
    assert f"port {stack.value('HTTPS_PORT')} (HTTPS_PORT) on 127.0.0.1 is taken" in refused.stderr
