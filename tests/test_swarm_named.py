"""Named servers and DATASETS in Swarm mode, through the whole platform on a real Swarm.

On a two-engine test cluster with `make up` (tests/swarmstack.py, NAMED_SERVERS and
DATASETS in its .env), a student through nginx over TLS writes a file in the default
server, starts a named server: it runs on the same node and reads the same file; the
default server stopped and started through the hub comes back on that node with the
file, and /user/<name>/lab answers. The dataset (a host folder every node sees at one
path) is readable in the server and not writable, though its folder is writable by
anyone on the host: the mount is read-only. Against the Swarm proxy with the same
DATASETS, a service that binds another host folder or mounts the dataset writable is
refused (403) and the manager has no such service, while the same service with the
dataset read-only is created. A student in the group of a dataset whose folder no node
has gets a failed spawn naming the node and the folder, at once; `make up` has already
warned of that folder, and of one that every node has but no student can read, naming
each node.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from labhub.contract import volume_name_for
from stacks import STACK
from swarmlab import service_body, swarm_proxy, wait_for_running_task
from swarmstack import PREFIX, WORKSPACE_IMAGE, SwarmStack, swarm_stack_up
from test_named_servers import Student, new_student

from testsupport.dockerproxy import raw_request
from testsupport.hubclient import token_session

# Two engines with the 2.4 GB workspace image loaded take minutes before make up starts.
pytestmark = [pytest.mark.swarm, pytest.mark.e2e, pytest.mark.timeout(2400)]

README = "the MNIST digits, read only\n"


@pytest.fixture(scope="module")
def dataset() -> Iterator[Path]:
    """A dataset folder on the host, which every test node's engine sees at the same path.
    Writable by anyone: only the mount's read-only flag keeps a server from writing."""
    root = Path(tempfile.mkdtemp(prefix="lhnamed-dataset-"))
    try:
        root.chmod(0o755)
        folder = root / "mnist"
        folder.mkdir(mode=0o777)
        folder.chmod(0o777)
        (folder / "README").write_text(README)
        (folder / "README").chmod(0o666)
        # On every node, but readable by root only: no student could read it.
        (root / "private").mkdir(mode=0o700)
        yield folder
    finally:
        shutil.rmtree(root)


def datasets_value(folder: Path) -> str:
    """The mnist folder for everyone, for the group `lost` a folder no node has, and for the
    group `staff` one that every node has but that the users' servers cannot read."""
    return json.dumps(
        [
            {"name": "mnist", "source": str(folder)},
            {"name": "lost", "source": str(folder.parent / "lost"), "groups": ["lost"]},
            {"name": "private", "source": str(folder.parent / "private"), "groups": ["staff"]},
        ]
    )


@pytest.fixture(scope="module")
def named_stack(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Iterator[SwarmStack]:
    extra = {"NAMED_SERVERS": "2", "DATASETS": datasets_value(dataset)}
    with swarm_stack_up(tmp_path_factory.mktemp("swarm-named"), extra=extra) as running:
        yield running


def service_node(named_stack: SwarmStack, student: Student, server: str = "") -> str:
    name = f"{PREFIX}-{student.name}" + (f"--{server}" if server else "")
    return wait_for_running_task(named_stack.swarm, name)


def test_a_students_servers_share_one_node_and_home_and_a_restart_keeps_them(
    named_stack: SwarmStack,
) -> None:
    student = new_student(named_stack.stack)
    proof = uuid.uuid4().hex
    student.start("", "default")
    home = service_node(named_stack, student)
    student.run("", f"open('/home/jovyan/proof.txt', 'w').write({proof!r})")
    # A named server: on the user's home node (placement by load would pick the other,
    # the default server's node being the busier), with the same file.
    student.start("train", "default")
    assert service_node(named_stack, student, "train") == home
    assert student.run("train", "print(open('/home/jovyan/proof.txt').read())").strip() == proof
    # The default server stopped and started through the hub: same node, same file.
    student.stop("")
    student.start("", "default")
    assert service_node(named_stack, student) == home
    assert student.run("", "print(open('/home/jovyan/proof.txt').read())").strip() == proof
    session = token_session(named_stack.stack.ca_file, student.client.new_token(student.name))
    lab = session.get(f"{named_stack.stack.base_url}/user/{student.name}/lab", timeout=60)
    assert lab.status_code == 200 and "jupyter-config-data" in lab.text, lab.text[:300]
    # One home volume, on that node only.
    volume = volume_name_for(student.name, STACK)
    holders = [
        n.node_id for n in named_stack.swarm.nodes if volume in n.docker("volume", "ls", "-q")
    ]
    assert holders == [home]
    # The dataset: readable, and not writable though its folder is (a read-only mount).
    probe = (
        "import errno\n"
        "print(open('/datasets/mnist/README').read(), end='')\n"
        "try:\n"
        "    open('/datasets/mnist/new', 'w')\n"
        "except OSError as error:\n"
        "    print('refused', errno.errorcode[error.errno])\n"
    )
    for server in ("", "train"):
        assert student.run(server, probe) == README + "refused EROFS\n"
    student.stop("train")
    student.stop("")


def test_the_swarm_proxy_allows_the_dataset_read_only_and_no_other_bind(
    named_stack: SwarmStack, dataset: Path
) -> None:
    """Real bytes to labhub's Swarm proxy (as `make up` configures it) in front of the
    manager: the body LabSwarmSpawner would send for a user's server with the dataset,
    then the same with another bind or the dataset writable."""
    manager = named_stack.manager
    student = new_student(named_stack.stack)
    student.start("", "default")  # makes the user's network, which a service must join
    node = service_node(named_stack, student)
    home = {"Target": "/home/jovyan", "Source": volume_name_for(student.name, STACK),
            "Type": "volume"}  # fmt: skip
    mnist = {"Target": "/datasets/mnist", "Source": str(dataset), "Type": "bind"}
    attacks = {
        "writable": [home, {**mnist, "ReadOnly": False}],
        "unset": [home, mnist],
        "another-bind": [home, {**mnist, "Source": "/etc", "ReadOnly": True}],
        "dataset-elsewhere": [home, {**mnist, "Target": "/home/jovyan/.local", "ReadOnly": True}],
    }
    with swarm_proxy(
        named_stack.swarm, network=STACK, image=WORKSPACE_IMAGE, DATASETS=datasets_value(dataset)
    ) as port:
        for attack, mounts in attacks.items():
            body = json.loads(service_body(student.name, image=WORKSPACE_IMAGE, network=STACK,
                                           node_id=node, Mounts=mounts))  # fmt: skip
            body["Name"] = f"{PREFIX}-{student.name}--{attack}"
            status, answer = raw_request(
                port, "POST", "/v1.41/services/create", json.dumps(body).encode()
            )
            assert status == 403, (attack, answer)
            assert not manager.docker("service", "ls", "-q", "--filter", f"name={body['Name']}")
        # The control: the dataset read-only is created, and removed again.
        control = [home, {**mnist, "ReadOnly": True}]
        body = json.loads(service_body(student.name, image=WORKSPACE_IMAGE, network=STACK,
                                       node_id=node, Mounts=control))  # fmt: skip
        body["Name"] = f"{PREFIX}-{student.name}--probe"
        status, answer = raw_request(
            port, "POST", "/v1.41/services/create", json.dumps(body).encode()
        )
        assert status == 201, answer
        removed, answer = raw_request(port, "DELETE", f"/v1.41/services/{body['Name']}")
        assert removed == 200, answer
    student.stop("")


def test_make_up_warns_of_a_dataset_folder_a_node_lacks_or_students_cannot_read(
    named_stack: SwarmStack, dataset: Path
) -> None:
    """Checked ahead on every node (a global job binding each folder, as a user's server),
    as the admin reads it at `make up`, rather than at a student's failed spawn only."""
    lost = dataset.parent / "lost"
    for node in named_stack.swarm.nodes:
        # The test nodes share this host's name (its UTS namespace).
        name = f"{socket.gethostname()} ({node.node_id})"
        warning = f"make up: warning: node {name} has no folder {lost} (DATASETS lost)"
        assert warning in named_stack.up_output, named_stack.up_output[-3000:]
        private = dataset.parent / "private"
        unreadable = (
            f"make up: warning: node {name} has the folder {private} (DATASETS private), but "
            "the users' servers (uid 1000, gid 100) cannot read it"
        )
        assert unreadable in named_stack.up_output, named_stack.up_output[-3000:]
    assert "bind source path does not exist" in named_stack.up_output
    # The folder every node has, readable, is not named; the checks are gone.
    assert str(dataset) not in named_stack.up_output
    services = named_stack.manager.docker("service", "ls", "--format", "{{.Name}}").split()
    assert not [name for name in services if "dataset-check" in name], services


def test_a_dataset_folder_missing_on_the_node_fails_the_spawn_naming_node_and_folder(
    named_stack: SwarmStack, dataset: Path
) -> None:
    """Not a task the Swarm retries until the start timeout (180 s) with no word why."""
    student = new_student(named_stack.stack)
    admin = named_stack.stack.admin()
    grouped = admin.api("POST", "/groups/lost", json={"users": [student.name]})
    assert grouped.status_code == 201, grouped.text
    started = time.monotonic()
    response = student.client.api("POST", student.servers_path(""), json={})
    if response.status_code < 400:  # a slow spawn: the message comes as its progress ends
        progress = student.client.api("GET", f"/users/{student.name}/server/progress", stream=True)
        events = [line for line in progress.iter_lines(decode_unicode=True) if "failed" in line]
        message = events[-1] if events else ""
    else:
        message = response.text
    assert time.monotonic() - started < 90, message
    missing = dataset.parent / "lost"
    nodes = {node.node_id for node in named_stack.swarm.nodes}
    assert f"has no folder {missing} for a dataset" in message, message
    assert any(f"node {node} has no folder" in message for node in nodes), message
    student.wait("", ready=False)
    assert not named_stack.manager.docker(
        "service", "ls", "-q", "--filter", f"name={PREFIX}-{student.name}"
    )
