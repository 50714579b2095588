"""`make doctor` (scripts/doctor.sh) with fake `docker`, `nvidia-smi`, `nvidia-ctk`
and `df` on PATH: each host problem gives a FAIL line and a non-zero exit."""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from stacks import REPO, Stack

DOCTOR = REPO / "scripts" / "doctor.sh"


@dataclass(frozen=True)
class Host:
    """What the fake tools report."""

    docker_version: str | None = "27.5.1"
    default_runtime: str = "runc"
    socket_mode: int = 0o660
    free_gb: int = 500
    gpus: str | None = None  # nvidia-smi's csv lines; None: no nvidia-smi at all
    toolkit: str | None = None  # nvidia-ctk's version; None: no nvidia-ctk


def fake(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_doctor(tmp_path: Path, host: Host) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    root = tmp_path / "docker-root"
    root.mkdir()
    if host.docker_version is None:
        fake(bin_dir, "docker", "echo 'Cannot connect to the Docker daemon' >&2; exit 1\n")
    else:
        fake(
            bin_dir,
            "docker",
            'case "$*" in\n'
            f"  *Server.Version*) echo {host.docker_version} ;;\n"
            f"  *DefaultRuntime*) echo {host.default_runtime} ;;\n"
            f"  *DockerRootDir*) echo {root} ;;\n"
            "  *) exit 1 ;;\n"
            "esac\n",
        )
    fake(
        bin_dir,
        "df",
        "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
        f"echo '/dev/x 999999999 1 {host.free_gb * 1024 * 1024} 1% /'\n",
    )
    if host.gpus is not None:
        fake(bin_dir, "nvidia-smi", f"printf '{host.gpus}'\n")
    if host.toolkit is not None:
        fake(bin_dir, "nvidia-ctk", f"echo 'NVIDIA Container Toolkit CLI version {host.toolkit}'\n")
    socket_file = tmp_path / "docker.sock"
    socket_file.touch()
    socket_file.chmod(host.socket_mode)
    # Only the fakes and the basic tools; never the host's own nvidia-smi or docker.
    basics = tmp_path / "basics"
    basics.mkdir()
    for tool in ("bash", "sort", "head", "awk", "grep", "stat", "wc", "cut", "uniq", "xargs"):
        for folder in ("/usr/bin", "/bin"):
            if os.path.exists(f"{folder}/{tool}"):
                (basics / tool).symlink_to(f"{folder}/{tool}")
                break
    return subprocess.run(
        ["bash", str(DOCTOR)],
        env={
            "PATH": f"{bin_dir}:{basics}",
            "DOCKER_SOCKET": str(socket_file),
            "ENV_FILE": str(tmp_path / "no.env"),  # the host checks only
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD_GPU = "NVIDIA A100-SXM4-80GB, 560.35.03\\nNVIDIA A100-SXM4-80GB, 560.35.03\\n"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("host", "exit_code", "expected"),
    [
        (Host(), 0, ["WARN  no GPU: CPU-only", "PASS  Docker engine 27.5.1"]),
        (
            Host(gpus=GOOD_GPU, toolkit="1.19.1"),
            0,
            ["PASS  NVIDIA driver 560.35.03, 2 GPU(s)", "PASS  NVIDIA Container Toolkit 1.19.1"],
        ),
        (Host(gpus=GOOD_GPU, toolkit="1.20.0"), 0, ["PASS  NVIDIA Container Toolkit 1.20.0"]),
        (Host(gpus=GOOD_GPU, toolkit="1.17.8"), 1, ["FAIL  NVIDIA Container Toolkit 1.17.8"]),
        (Host(gpus=GOOD_GPU, toolkit="1.19.0"), 1, ["FAIL  NVIDIA Container Toolkit 1.19.0"]),
        (Host(gpus=GOOD_GPU), 1, ["FAIL  NVIDIA Container Toolkit not found"]),
        (Host(gpus="", toolkit="1.19.1"), 1, ["FAIL  NVIDIA driver: nvidia-smi found"]),
        (
            Host(gpus=GOOD_GPU, toolkit="1.19.1", default_runtime="nvidia"),
            1,
            ["FAIL  Docker's default runtime is nvidia"],
        ),
        (Host(socket_mode=0o666), 1, ["FAIL  Docker socket", "world-writable (mode 666)"]),
        (Host(docker_version=None), 1, ["FAIL  Docker engine: not answering"]),
        (Host(docker_version="19.03.15"), 1, ["FAIL  Docker engine 19.03.15 is older"]),
        (Host(free_gb=50), 0, ["WARN  disk space: 50 GB free"]),
        (Host(free_gb=5), 1, ["FAIL  disk space: 5 GB free"]),
    ],
    ids=[
        "cpu-only",
        "gpu-good",
        "toolkit-newer",
        "toolkit-old",
        "toolkit-just-below",
        "toolkit-missing",
        "driver-not-loaded",
        "nvidia-default-runtime",
        "socket-world-writable",
        "docker-down",
        "docker-old",
        "disk-low",
        "disk-full",
    ],
)
def test_doctor_reports_each_problem(
    tmp_path: Path, host: Host, exit_code: int, expected: list[str]
) -> None:
    result = run_doctor(tmp_path, host)
    assert result.returncode == exit_code, result.stdout + result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
    lines = result.stdout.splitlines()
    assert all(line.startswith(("PASS  ", "WARN  ", "FAIL  ", "doctor: ")) for line in lines)
    assert (exit_code == 1) == any(line.startswith("FAIL") for line in lines)


@pytest.mark.integration
def test_doctor_on_this_host_says_cpu_only_without_failing() -> None:
    result = subprocess.run(
        ["make", "-s", "doctor"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    print(result.stdout)
    if "nvidia-smi" in result.stdout and "not found" not in result.stdout:
        pytest.skip("this host has a GPU driver")
    assert "no GPU: CPU-only" in result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_doctor_checks_the_running_stack(stack: Stack) -> None:
    result = stack.make("-s", "doctor", check=False)
    out = result.stdout
    assert f"PASS  settings in {stack.env_file}: settings OK" in out, out
    for service in ("hub", "proxy", "proxy-chp", "docker-proxy"):
        assert f"PASS  service {service} of " in out, out
    assert "PASS  certificate " in out and "valid until" in out, out
    assert result.returncode == 0, out
