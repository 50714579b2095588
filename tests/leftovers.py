"""Remove the test stacks that a killed `make test` left on this host's engine.

A run's fixtures always tear their stacks down, but a run that is killed outright (SIGKILL,
a machine stopped or snapshotted mid-run) cannot, and the stacks' restart policy brings
them back whenever the engine starts: the next run then finds its stack names taken and
fails. So tests/run-all.sh starts with this: each run works in a folder of its own,
`<tmp>/labhub-test.*` with its PID in `run.pid`, and compose records each stack's .env on
its containers. A stack whose .env lies in the folder of a run that no longer runs is a
leftover, removed with its users' containers, volumes and firewall chains, and then that
folder. A stack of a run that still runs, or of any other checkout or pytest run, is kept.

    python tests/leftovers.py <PID of run-all.sh>    # prints the new run's folder
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import docker
from labhub.contract import volume_prefix
from stacks import Stack

RUN_FOLDER_PREFIX = "labhub-test."
RUN_PID_FILE = "run.pid"
ENV_FILE_LABEL = "com.docker.compose.project.environment_file"


def run_folder_of(env_file: Path, tmp: Path) -> Path | None:
    """The `make test` run folder that holds `env_file`, if it lies in one."""
    for folder in env_file.parents:
        if folder.parent == tmp and folder.name.startswith(RUN_FOLDER_PREFIX):
            return folder
    return None


def still_runs(folder: Path) -> bool:
    """Whether the run-all.sh that made `folder` is still running (its PID, and a PID
    that a later process reused after a restart does not count)."""
    try:
        pid = int((folder / RUN_PID_FILE).read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"run-all.sh" in command


def remove_leftovers(tmp: Path) -> list[str]:
    """Tear down every stack of a `make test` run under `tmp` that no longer runs; return
    the stacks' names."""
    api = docker.from_env()
    stacks: dict[Path, Path] = {}  # a leftover stack's .env -> its run folder
    for container in api.containers.list(all=True, filters={"label": ENV_FILE_LABEL}):
        env_file = Path(container.labels[ENV_FILE_LABEL])
        folder = run_folder_of(env_file, tmp)
        if folder is not None and not still_runs(folder):
            stacks[env_file] = folder
    removed = []
    for env_file, folder in sorted(stacks.items()):
        if not env_file.is_file():
            print(f"[test] {env_file} is gone: remove its stack by hand", file=sys.stderr)
            continue
        stack = Stack(env_file, folder, "", "")
        network = stack.value("DOCKER_NETWORK")
        volumes = [v.name for v in api.volumes.list() if v.name.startswith(volume_prefix(network))]
        stack.tear_down(volumes)
        removed.append(stack.value("STACK_NAME"))
    for folder in set(stacks.values()):
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def new_run_folder(pid: int) -> Path:
    """The folder of a new run, whose run-all.sh has `pid`."""
    folder = Path(tempfile.mkdtemp(prefix=RUN_FOLDER_PREFIX))
    (folder / RUN_PID_FILE).write_text(f"{pid}\n")
    return folder


if __name__ == "__main__":
    try:
        names = remove_leftovers(Path(tempfile.gettempdir()))
    except docker.errors.DockerException as error:
        sys.exit(
            f"[test] no Docker engine answered ({error}): start it first"
            " (systemctl start docker, or scripts/start-docker.sh)"
        )
    if names:
        print(f"[test] removed the stacks a killed run left: {', '.join(names)}", file=sys.stderr)
    print(new_run_folder(int(sys.argv[1])))
