"""`make test` after a run that was killed: that run's stacks are removed first, never those
of a run that still runs (tests/leftovers.py).

A killed run's stacks come back whenever the engine starts (their restart policy), and
the next run found its stack names taken: the CI of 761b4de failed so, on a machine
stopped while a test run of its own was going on.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import pytest
from labhub.contract import volume_name_for, volume_prefix
from labhub.netguard import chain_names
from leftovers import RUN_FOLDER_PREFIX, RUN_PID_FILE, remove_leftovers
from stacks import HTTPS_PORT, STACK, stack_in

from testsupport.containers import user_containers

pytestmark = pytest.mark.e2e

NAME, PORT = f"{STACK}left", HTTPS_PORT + 12
STUDENT = "leftover-student"


def project_containers(name: str) -> list[str]:
    found = docker.from_env().containers.list(
        all=True, filters={"label": f"com.docker.compose.project={name}"}
    )
    return [container.name for container in found]


def host_chains() -> str:
    return subprocess.run(
        ["iptables", "-S"], capture_output=True, text=True, check=True, timeout=60
    ).stdout


def test_the_stacks_of_a_killed_run_are_removed_and_those_of_a_running_run_kept(
    tmp_path: Path,
) -> None:
    run = tmp_path / f"{RUN_FOLDER_PREFIX}killed"
    workdir = run / "host" / f"{NAME}0"
    workdir.mkdir(parents=True)
    stack = stack_in(workdir, NAME, PORT)
    # The run-all.sh of that run, still going: a process under that name.
    runner = subprocess.Popen(["bash", "-c", "sleep 600; true", "run-all.sh"])
    (run / RUN_PID_FILE).write_text(f"{runner.pid}\n")
    api = docker.from_env()
    try:
        stack.make("up")
        client = stack.login(STUDENT)
        client.start_server(STUDENT)
        assert user_containers(NAME, STUDENT)
        chains = chain_names(stack.value("USERS_BRIDGE"))
        assert all(f"-N {chain}" in host_chains() for chain in chains)

        assert remove_leftovers(tmp_path) == []
        assert f"{NAME}-hub-1" in project_containers(NAME)
        assert user_containers(NAME, STUDENT)

        runner.kill()
        runner.wait()
        assert remove_leftovers(tmp_path) == [NAME]
        assert project_containers(NAME) == []
        assert user_containers(NAME) == []
        assert [v.name for v in api.volumes.list() if v.name.startswith(volume_prefix(NAME))] == []
        assert api.networks.list(names=[NAME]) == []
        assert not any(f"-N {chain}" in host_chains() for chain in chains)
        assert not run.exists()
    finally:
        runner.kill()
        runner.wait()
        if workdir.exists():
            stack.tear_down([volume_name_for(STUDENT, NAME)])
