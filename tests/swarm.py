"""A Docker Swarm of several engines on this one machine, for the scale-out tests.

Each node is a real `dockerd` in its own network namespace (its own data root, exec root,
pid file and socket), the namespaces joined by veth pairs to one host bridge, the first
node the manager. What this relies on was measured here (docs/scale-out.md, "The test
cluster"): `nsenter --net` and not `ip netns exec` (which remounts /sys and hides the
cgroup v1 mounts), an explicit ACCEPT for traffic between the bridge's ports (Docker's
FORWARD policy is DROP), no IPVS in the kernel (services use `--endpoint-mode dnsrr`), no
default route in the namespaces (nothing leaves the machine) and `--no-resolve-image`.
Each engine runs with `--no-new-privileges`, as labhub's Swarm mode requires.
Everything is removed afterwards by the names and process IDs this run made.

With `quota_root`, each engine also runs in a mount namespace of its own (`unshare
--mount`, a slave of the host's: the host's unmounts reach it, its own mounts stay in it),
where a btrfs of its own with quotas on is mounted at that one path, as each real node
has its own disk at QUOTA_ROOT, and a tmpfs at the diskquota sockets' folder;
`Node.in_mounts` runs a command (a node's diskquota service and Docker proxy, `btrfs`)
in that node's view of the filesystem.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labhub.diskquota import SOCKET

from testsupport.waiting import wait_until

STATE_ROOT = Path("/var/lib/labhub-test-swarm")
RUN_ROOT = Path("/run/labhub-test-swarm")
# Stopped engines' data roots with images loaded, one folder per test run (its process ID):
# what a node's data root starts from (`_data_root_with`).
DATA_ROOTS = STATE_ROOT / "data-roots"
# A /24 per run inside this range; checked against the host's routes before use.
ADDRESS_RANGE = ipaddress.IPv4Network("10.233.0.0/16")
# Where a test's registry listens, on the manager's address (tests/test_registry.py).
REGISTRY_PORT = 5000
# With `quota_root`: each node's own tmpfs here, for its diskquota service's sockets (the
# folder labhub's node proxy and diskquota service find them in).
DISKQUOTA_SOCKETS = Path(SOCKET).parent
# Run in the node's new mount namespace before its dockerd: its btrfs ($1, a loop device)
# at QUOTA_ROOT ($2) with quotas on, a tmpfs at the sockets' folder ($3).
_OWN_MOUNTS = (
    'mount "$1" "$2"; btrfs quota enable "$2"; mount -t tmpfs tmpfs "$3"; shift 3; exec "$@"'
)


def run(*args: str, check: bool = True, timeout: float = 120, **kwargs: object) -> str:
    result = subprocess.run(
        list(args), text=True, capture_output=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return str(result.stdout)


@dataclass
class Node:
    """One engine of the cluster."""

    name: str
    address: str
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    # With the cluster's `quota_root`: the loop device of this node's own btrfs.
    quota_device: str = ""

    @property
    def socket(self) -> Path:
        return RUN_ROOT / self.name / "docker.sock"

    @property
    def fake_nvml(self) -> Path:
        """What the stand-in nvidia-smi reports on this node, once a test writes it: its
        engine's runtime (tests/fake-gpu) finds it through FAKE_NVML_STATE."""
        return STATE_ROOT / self.name / "fake-nvidia-smi.json"

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return run("docker", "-H", f"unix://{self.socket}", *args, check=check, timeout=timeout)

    def mounts(self) -> list[str]:
        """The command prefix that runs a command in this node's mount namespace (its
        engine's: with `quota_root`, its own btrfs and sockets' folder)."""
        assert self.process is not None, "the node's engine is not started"
        return ["nsenter", f"--mount=/proc/{self.process.pid}/ns/mnt"]

    def in_mounts(self, *args: str, check: bool = True) -> str:
        return run(*self.mounts(), *args, check=check)


def _other_clusters_networks() -> list[ipaddress.IPv4Network]:
    """The networks of other test clusters' nodes, which leave no route on the host (until
    a test gives the host an address there): read in each node's network namespace."""
    namespaces = [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line]
    return [
        ipaddress.IPv4Network(word, strict=False)
        for name in namespaces
        if name.startswith("lhsw")
        for word in run("nsenter", f"--net=/run/netns/{name}", "ip", "-4", "-o", "addr").split()
        if "/" in word and word[0].isdigit()
    ]


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of ADDRESS_RANGE that no host route or address, and no other test cluster, uses."""
    used = [
        ipaddress.IPv4Network(word, strict=False)
        for line in run("ip", "-4", "route", "show", "table", "all").splitlines()
        for word in line.split()[:1]
        if word[0].isdigit()
    ] + _other_clusters_networks()
    for candidate in ADDRESS_RANGE.subnets(new_prefix=24):
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise RuntimeError(f"no free /24 left in {ADDRESS_RANGE} for a test swarm")


class Swarm:
    """`with Swarm(3) as swarm:` a manager (`swarm.nodes[0]`) and two workers.

    `images` are copied to every node, `manager_images` to the manager only;
    `dockerd_args` are added to every node's dockerd command line, and `dockerd_path`
    folders put first on its PATH (e.g. the stand-in NVIDIA hook, without which the engine
    refuses `--gpus`). With
    `insecure_registry`, every engine pulls over plain HTTP from `swarm.registry` (the
    manager's address): the test's registry, on the test bridge only. With `quota_root`,
    every node has its own btrfs there (the module's docstring).
    """

    def __init__(
        self,
        size: int,
        images: Sequence[str] = (),
        manager_images: Sequence[str] = (),
        insecure_registry: bool = False,
        dockerd_args: Sequence[str] = (),
        quota_root: Path | None = None,
        dockerd_path: Sequence[Path] = (),
    ) -> None:
        tag = f"{os.getpid() % 10000:04d}"
        self.bridge = f"lhswbr{tag}"
        subnet = _free_subnet()
        hosts = list(subnet.hosts())
        self.prefix = subnet.prefixlen
        self._subnet = subnet
        self.nodes = [Node(f"lhsw{tag}n{i}", str(hosts[9 + i])) for i in range(size)]
        self.images = images
        self.manager_images = manager_images
        self.insecure_registry = insecure_registry
        # Extra options for every node's dockerd (e.g. a stand-in GPU runtime).
        self.dockerd_args = list(dockerd_args)
        self.dockerd_path = [str(folder) for folder in dockerd_path]
        self.quota_root = quota_root
        self._forward_rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def registry(self) -> str:
        """host:port of a registry in the manager's namespace, for `insecure_registry`."""
        return f"{self.manager.address}:{REGISTRY_PORT}"

    def __enter__(self) -> Swarm:
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _up(self) -> None:
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "link", "set", self.bridge, "up")
        # The subnet's route, at once: the next run's _free_subnet sees it as taken (the
        # nodes' addresses are in their namespaces; gone with the bridge).
        run("ip", "route", "add", str(self._subnet), "dev", self.bridge)
        run("iptables", "-I", *self._forward_rule)
        # The nodes have no registry in these tests: each engine starts with the images
        # already in its data root.
        for node in self.nodes:
            groups = [self.images, self.manager_images if node is self.manager else ()]
            self._start(node, _data_root_with(tuple(tuple(g) for g in groups if g)))
        for node in self.nodes:
            self._wait_for_engine(node)
        manager = self.manager
        manager.docker("swarm", "init", "--advertise-addr", manager.address)
        token = manager.docker("swarm", "join-token", "-q", "worker").strip()
        for worker in self.workers:
            worker.docker(
                "swarm", "join", "--token", token, "--advertise-addr", worker.address,
                f"{manager.address}:2377",
            )  # fmt: skip
        for node in self.nodes:
            node.node_id = node.docker("info", "--format", "{{.Swarm.NodeID}}").strip()

    def _start(self, node: Node, images: Path | None) -> None:
        host_end, node_end = f"{node.name}h", f"{node.name}c"
        run("ip", "netns", "add", node.name)
        run("ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end)
        run("ip", "link", "set", node_end, "netns", node.name)
        run("ip", "link", "set", host_end, "master", self.bridge, "up")
        inside = ("ip", "-n", node.name)
        run(*inside, "addr", "add", f"{node.address}/{self.prefix}", "dev", node_end)
        run(*inside, "link", "set", node_end, "up")
        run(*inside, "link", "set", "lo", "up")
        state, runtime = STATE_ROOT / node.name, RUN_ROOT / node.name
        state.mkdir(parents=True)
        runtime.mkdir(parents=True)
        if images is not None:
            _copy_data_root(images, state / "data")
        log = (state / "dockerd.log").open("wb")
        node.process = subprocess.Popen(
            [
                "nsenter", f"--net=/run/netns/{node.name}", *self._own_mounts(node, state),
                "dockerd",
                "--data-root", str(state / "data"), "--exec-root", str(runtime / "exec"),
                "--pidfile", str(runtime / "dockerd.pid"), "-H", f"unix://{node.socket}",
                "--cgroup-parent", node.name,
                # labhub's Swarm mode needs it: the service API (1.41) has no per-service
                # no-new-privileges (docs/scale-out.md).
                "--no-new-privileges", *self.dockerd_args,
                *(["--insecure-registry", self.registry] if self.insecure_registry else []),
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={
                **os.environ,
                "FAKE_NVML_STATE": str(node.fake_nvml),
                "PATH": os.pathsep.join([*self.dockerd_path, os.environ["PATH"]]),
            },
        )  # fmt: skip

    def _own_mounts(self, node: Node, state: Path) -> list[str]:
        """With `quota_root`: the node's btrfs made (a loop device), and the command prefix
        that starts its engine in a mount namespace of its own with it mounted."""
        if self.quota_root is None:
            return []
        image = state / "quota.img"
        run("truncate", "-s", "300M", str(image))
        run("mkfs.btrfs", "-q", str(image))
        node.quota_device = run("losetup", "--find", "--show", str(image)).strip()
        self.quota_root.mkdir(parents=True, exist_ok=True)
        DISKQUOTA_SOCKETS.mkdir(exist_ok=True)
        return [
            "unshare", "--mount", "--propagation", "slave", "sh", "-ec", _OWN_MOUNTS, "sh",
            node.quota_device, str(self.quota_root), str(DISKQUOTA_SOCKETS),
        ]  # fmt: skip

    def _wait_for_engine(self, node: Node) -> None:
        assert node.process is not None, "the node's engine is not started"
        _wait_for_dockerd(
            node.process,
            node.socket,
            STATE_ROOT / node.name / "dockerd.log",
            f"dockerd of {node.name}",
        )

    def close(self) -> None:
        """Remove every engine, mount, namespace, link and rule this cluster made."""
        for node in self.nodes:
            if node.process is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGTERM)
            try:
                node.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=30)
        for node in self.nodes:
            for root in (RUN_ROOT / node.name, STATE_ROOT / node.name):
                _unmount_below(root)
                shutil.rmtree(root, ignore_errors=True)
            run("ip", "netns", "del", node.name, check=False)
            run("ip", "link", "del", f"{node.name}h", check=False)
            if node.quota_device:  # its mounts went with its engine's mount namespace
                run("losetup", "-d", node.quota_device, check=False)
        if self.quota_root is not None:
            for folder in (self.quota_root, DISKQUOTA_SOCKETS):
                with contextlib.suppress(OSError):
                    folder.rmdir()
        run("iptables", "-D", *self._forward_rule, check=False)
        run("ip", "link", "del", self.bridge, check=False)


def _wait_for_dockerd(process: subprocess.Popen[bytes], socket: Path, log: Path, name: str) -> None:
    """Until the engine `process` started answers at `socket` (`docker version`'s exit
    status: it prints the client's part without an engine); its log's end if it exits."""
    version = ["docker", "-H", f"unix://{socket}", "version"]

    def answering() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log.read_text()[-2000:]}")
        return subprocess.run(version, capture_output=True, timeout=10, check=False).returncode == 0

    wait_until(answering, 90, f"{name} to answer", interval=0.5)


def _unmount_below(root: Path) -> None:
    """Lazily unmount what a stopped dockerd left below `root` (deepest first)."""
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(f"{root}/")
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        run("umount", "-l", mount, check=False)


def _data_root_with(groups: tuple[tuple[str, ...], ...]) -> Path | None:
    """A stopped engine's data root holding the images of `groups` (this host's images by
    name), made once per test run: the last group loaded on top of a copy of the data root
    of the groups before it. What `docker save | docker load` costs (a minute or more for
    the workspace image, per node and per cluster) is paid once per set of images."""
    if not groups:
        return None
    ids = [
        run("docker", "image", "inspect", "--format", "{{.Id}}", *group).split() for group in groups
    ]
    key = hashlib.sha256(repr(ids).encode()).hexdigest()[:16]
    data_root = _run_data_roots() / key
    if data_root.is_dir():
        return data_root
    building = data_root.with_name(f"{key}.building")
    shutil.rmtree(building, ignore_errors=True)
    below = _data_root_with(groups[:-1])
    if below is not None:
        _copy_data_root(below, building)
    _load(building, groups[-1])
    building.rename(data_root)
    return data_root


def _copy_data_root(source: Path, target: Path) -> None:
    """The images of a stopped engine's data root, for a new engine: the layers' files as
    hard links (an image layer's files are never written once it is made; a container
    writes to a layer of its own), the image store's records as copies."""
    target.mkdir(parents=True)
    run("cp", "-a", "--link", str(source / "overlay2"), str(target / "overlay2"), timeout=300)
    run("cp", "-a", str(source / "image"), str(target / "image"), timeout=300)


def _load(data_root: Path, images: Sequence[str]) -> None:
    """`docker save images | docker load` into an engine of its own on `data_root`, with no
    network of its own (a namespace without links), stopped after."""
    runtime = RUN_ROOT / f"data-root-{os.getpid()}"
    runtime.mkdir(parents=True, exist_ok=True)
    socket = runtime / "docker.sock"
    log_file = data_root.with_suffix(".log")  # beside the data root, named by its key
    with log_file.open("wb") as log:
        engine = subprocess.Popen(
            [
                "unshare", "--net", "dockerd", "--data-root", str(data_root),
                "--exec-root", str(runtime / "exec"), "--pidfile", str(runtime / "dockerd.pid"),
                "-H", f"unix://{socket}", "--bridge", "none", "--iptables=false",
                "--ip6tables=false",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for_dockerd(engine, socket, log_file, f"dockerd on {data_root}")
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "-H", f"unix://{socket}", "load", "--quiet"],
            stdin=save.stdout, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert save.stdout is not None
        save.stdout.close()
        if save.wait(timeout=60) != 0 or load.returncode != 0:
            raise RuntimeError(f"loading {' '.join(images)} failed: {load.stderr}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(engine.pid, signal.SIGTERM)
        engine.wait(timeout=60)
        _unmount_below(runtime)
        shutil.rmtree(runtime, ignore_errors=True)


def _run_data_roots() -> Path:
    """This run's folder of data roots (removed when it ends), after removing those of runs
    that ended without removing theirs."""
    mine = DATA_ROOTS / str(os.getpid())
    if not mine.is_dir():
        DATA_ROOTS.mkdir(parents=True, exist_ok=True)
        for folder in DATA_ROOTS.iterdir():
            if not Path(f"/proc/{folder.name}").exists():
                shutil.rmtree(folder, ignore_errors=True)
        mine.mkdir()
        atexit.register(shutil.rmtree, mine, True)
    return mine
