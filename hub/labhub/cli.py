"""`labhub`: small commands the Makefile runs inside the hub image.

labhub check-settings    validate the settings in the environment (.env), the users'
                         network's too, before `make up` starts anything; exit 2 with
                         every problem listed
labhub settings-docs     write .env.example and docs/settings.md from the settings table
                         (--check: exit 1 if they differ from it, changing nothing)
labhub z2jh-values       print the same lab as Zero to JupyterHub values (YAML)
labhub course-link       print an nbgitpuller link for course material in git; with
                         --group, show it to that group on the hub's pages (docs/course.md)
labhub container-prefix NETWORK
                         what the name of every user container of that stack starts
                         with (`make down` and scripts/restore.sh find them by it)
labhub egress-conf --never NET ...
                         Swarm mode: the egress proxy's squid.conf from USER_INTERNET,
                         USER_LAN_ACCESS and USER_EGRESS_ALLOW (labhub.egress); never
                         EGRESS_SUBNET, nor each --never (the nodes, the overlay ranges)
labhub move-home USER NODE [--proxy NODE=URL ...]
                         Swarm mode: move a stopped user's home volume to another node
                         through the nodes' Docker proxies, check it, switch (docs/scale-out.md)
labhub home-archive USER
                         Swarm mode: the user's home as a tar on stdout, read on its node
                         through that node's Docker proxy (make backup)
labhub home-restore USER [--check] [--db DB] [--node NODE]
                         Swarm mode: make the user's home on its node exactly the tar on
                         stdin (members under jovyan/, or ./ from one host), checked back
                         (make restore); --node: on that node instead, then recorded as
                         the home node (make restore NODE=, the home node gone)
labhub owner-label       the label that names a user server's owner (make restore)
labhub dataset-folders   DATASETS' host folders, NAME<TAB>FOLDER per line (make up checks
                         on a Swarm that every node has them)
"""

from __future__ import annotations

import argparse
import functools
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from . import course, egress
from .contract import OWNER_LABEL, container_name_prefix, volume_name_for
from .datasets import mount_type
from .settings import NetworkSettings, Settings, SettingsError
from .settingsdoc import stale, write
from .volumes import DEFAULT_DB

if TYPE_CHECKING:
    from .homemove import HomeQuota

# Before volumes were named per stack, every stack used the default stack's names.
SHARED_VOLUME_NETWORK = "labhub"


def check_settings() -> int:
    """Print every problem with the settings, the hub's and the users' network's (exit 2),
    or a one-line OK (exit 0)."""
    problems: list[str] = []
    for build in (Settings.from_env, NetworkSettings.from_env):
        try:
            build(os.environ)
        except SettingsError as error:
            problems += error.problems
    if problems:
        print(SettingsError(problems), file=sys.stderr)
        return 2
    settings = Settings.from_env(os.environ)
    print(f"settings OK: AUTH={settings.auth}, {settings.public_url}")
    return 0


def settings_docs(root: Path, check: bool) -> int:
    """Regenerate the files the settings table describes (or, with check, list stale ones)."""
    if check:
        outdated = stale(root)
        for path in outdated:
            print(f"{path} differs from hub/labhub/settings.py: run make settings-docs")
        return 1 if outdated else 0
    for path in write(root):
        print(f"wrote {path}")
    return 0


def z2jh_values() -> int:
    """Print the Zero to JupyterHub values for the settings in the environment."""
    from .auth import authenticator_config, discover_endpoints
    from .gpu.allocator import load_gpu_files
    from .z2jh import to_yaml, values

    try:
        settings = Settings.from_env(os.environ)
        network = NetworkSettings.from_env(os.environ)
        # The endpoints are resolved now; the provider's CA is the cluster's business.
        oidc = None
        if settings.auth == "generic":
            assert settings.oauth is not None
            oidc = discover_endpoints(settings.oauth, "")
        _, traits = authenticator_config(settings, oidc=oidc)
        inventory, profiles = load_gpu_files(settings)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    print("# Zero to JupyterHub values made by `labhub z2jh-values`: docs/scale-out.md")
    print(to_yaml(values(settings, network, profiles, inventory, traits)))
    return 0


def user_volumes(db: str, network: str) -> int:
    """Print `name TAB volume TAB shared-era volume` for every user in the hub database."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM users ORDER BY name")]
    for name in names:
        volume = volume_name_for(name, network)
        print(f"{name}\t{volume}\t{volume_name_for(name, SHARED_VOLUME_NETWORK)}")
    return 0


# The hub's own API, from inside the hub container (compose: hub_bind_url :8081).
HUB_API = "http://127.0.0.1:8081/hub/api"


def course_link(args: argparse.Namespace) -> int:
    """Print the link; with --group, add it to (or --remove it from) the group's links."""
    settings = Settings.from_env(os.environ)
    try:
        link = course.nbgitpuller_link(settings.public_url, args.repo, args.branch, args.open)
    except course.CourseLinkError as error:
        print(f"labhub course-link: {error}", file=sys.stderr)
        return 2
    print(link)
    if not args.group:
        return 0
    http = requests.Session()
    http.trust_env = False  # the hub is local: no proxy from the environment
    token = course.service_token(Path(settings.data_dir) / course.TOKEN_FILE)
    http.headers["Authorization"] = f"token {token}"
    group_url = f"{HUB_API}/groups/{args.group}"
    found = http.get(group_url, timeout=30)
    if found.status_code == 404:
        names = [g["name"] for g in http.get(f"{HUB_API}/groups", timeout=30).json()]
        print(
            f"labhub course-link: there is no group {args.group!r} in the hub; groups: "
            f"{', '.join(names) or 'none yet'} (make groups on the admin page, /hub/admin)",
            file=sys.stderr,
        )
        return 2
    found.raise_for_status()
    group: dict[str, Any] = found.json()
    properties = group.get("properties") or {}
    if args.remove:
        changed = course.without_link(properties, link)
    else:
        changed = course.with_link(properties, args.title or course.target_folder(args.repo), link)
    http.put(f"{group_url}/properties", json=changed, timeout=30).raise_for_status()
    members = ", ".join(group.get("users", [])) or "nobody yet"
    done = "no longer shown" if args.remove else "shown on the hub's pages"
    print(f"{done} to group {args.group!r} ({members})")
    return 0


def move_home(args: argparse.Namespace) -> int:
    """Move the user's home to the node (exit 2 refused, 1 failed, the old home in use)."""
    from . import homemove

    settings = Settings.from_env(os.environ)
    if _homes_on_nfs(
        settings, "move-home: refused: the homes are",
        "there is nothing to move, any node runs the server",
    ):  # fmt: skip
        return 2
    proxies: dict[str, str] = {}
    for pair in args.proxy:
        node, equals, url = pair.partition("=")
        if not equals or not node or not url.startswith("tcp://"):
            print(
                f"labhub move-home: --proxy {pair!r}: give NODE_ID=tcp://HOST:PORT", file=sys.stderr
            )
            return 2
        proxies[node] = url
    network, image = settings.docker_network, settings.copy_helper_image

    def move() -> None:
        found = proxies or _deployed_node_proxies(settings, "make move-home USER=... NODE=...")
        row = homemove.read_home(args.db, args.user)
        plan = homemove.plan_move(args.user, args.node, row, found, network, homemove.swarm_nodes())
        quota = _home_quota(settings, args.db, args.user)
        homemove.move_home(
            plan,
            homemove.NodeEngine(plan.source, plan.source_proxy, network, image, quota),
            homemove.NodeEngine(plan.target, plan.target_proxy, network, image, quota),
            args.db,
            keep_old=args.keep_old,
        )

    return _exit_status("move-home", move)


def egress_conf(never: list[str]) -> int:
    """Print the egress proxy's squid.conf for the settings in the environment (exit 2
    with the problems, or on a --never value that is no address or network)."""
    try:
        net = NetworkSettings.from_env(os.environ)
        excluded = egress.networks(never)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"labhub egress-conf: --never {error}", file=sys.stderr)
        return 2
    rules = egress.EgressRules(
        net.internet, net.lan_access, net.egress_allow, (*excluded, net.egress_subnet)
    )
    print(egress.squid_conf(rules), end="")
    return 0


def _exit_status(command: str, action: Callable[[], object]) -> int:
    """Run a home command's work: exit 2 when refused (nothing changed), 1 when it failed
    part-way (labhub.homemove says what is left), 0 when done."""
    from .homemove import MoveFailed, MoveRefused

    try:
        action()
    except MoveRefused as error:
        print(f"labhub {command}: refused: {error}", file=sys.stderr)
        return 2
    except MoveFailed as error:
        print(f"labhub {command}: failed: {error}", file=sys.stderr)
        return 1
    return 0


def _homes_on_nfs(settings: Settings, whose: str, what_to_do: str) -> bool:
    """With HOME_NFS no home is on a node: say so (`labhub <whose> on the NFS server ...`)."""
    if settings.home_nfs:
        print(
            f"labhub {whose} on the NFS server ({settings.home_nfs}, HOME_NFS), not on a node: "
            f"{what_to_do}",
            file=sys.stderr,
        )
    return bool(settings.home_nfs)


def _home_quota(settings: Settings, db: Path, user: str) -> HomeQuota | None:
    """With disk quotas, the user's home's: QUOTA_ROOT and the limit their next spawn sets."""
    from . import homemove

    if not settings.disk_quotas.root:
        return None
    limit = settings.disk_quotas.limit_for(user, homemove.user_groups(db, user))
    return homemove.HomeQuota(settings.disk_quotas.root, limit)


def _deployed_node_proxies(settings: Settings, how: str) -> dict[str, str]:
    """The node proxies `make up` deployed, by node ID (labhub.homemove.find_node_proxies)."""
    from . import homemove

    if not settings.node_proxy_service:
        raise homemove.MoveRefused(
            f"NODE_PROXY_SERVICE is not set: run this in the hub's container ({how})"
        )
    return homemove.find_node_proxies(settings.node_proxy_service)


def gpu_inventory() -> int:
    """Print the GPUs nvidia-smi detects as a GPU_INVENTORY file to edit: on a Swarm every
    node's, asked of its Docker proxy, each device naming its node (by hostname where no
    other node answered with it, else by ID); on one host, this container's. Exit 1 when a
    node was not read: what was read is printed, and each node missing is named."""
    import asyncio
    import json

    from .gpu import inventory
    from .nodereads import NodeProxies

    settings = Settings.from_env(os.environ)
    if settings.engine != "swarm":
        inventory.main()
        return 0
    if not settings.node_proxy_service:
        print(
            "labhub gpu-inventory: NODE_PROXY_SERVICE is not set: run this in the hub's "
            "container (make gpu-inventory)",
            file=sys.stderr,
        )
        return 2

    def node_devices(answer: Any) -> list[dict[str, Any]]:
        inventory.validate_json(answer, inventory.schema(), "the answer")  # InventoryError
        return list(answer["devices"])

    proxies = NodeProxies(settings.node_proxy_service)
    read = asyncio.run(proxies.ask(inventory.NODE_DEVICES_ROUTE, "GPU devices", node_devices))
    devices = [
        {**device, "node": read.name_of(node)}
        for node, found in sorted(read.answers.items())
        for device in found
    ]
    json.dump({"devices": devices}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    for problem in read.problems:
        print(f"labhub gpu-inventory: not read: {problem}", file=sys.stderr)
    return 1 if read.problems else 0


def disk_usage() -> int:
    """Swarm mode with QUOTA_ROOT: every home's usage and limit, read on its node through
    that node's Docker proxy, with the node (exit 1 when a node was not read, naming it)."""
    import asyncio

    from .diskquota import QUOTA_USAGE_ROUTE, usage_table, usages
    from .nodereads import NodeProxies

    settings = Settings.from_env(os.environ)
    if not settings.disk_quotas.root:
        print("labhub disk-usage: QUOTA_ROOT is empty: disk quotas are off", file=sys.stderr)
        return 2
    if settings.engine != "swarm" or not settings.node_proxy_service:
        print(
            "labhub disk-usage: for ENGINE=swarm, in the hub's container (make disk-usage); "
            "on one host the diskquota service reports (make disk-usage)",
            file=sys.stderr,
        )
        return 2
    proxies = NodeProxies(settings.node_proxy_service)
    read = asyncio.run(proxies.ask(QUOTA_USAGE_ROUTE, "usage", usages))
    homes = [
        (volume, read.name_of(node), usage)
        for node, found in sorted(read.answers.items())
        for volume, usage in found.items()
    ]
    print(usage_table(homes, nodes=True))
    for problem in read.problems:
        print(f"labhub disk-usage: not read: {problem}", file=sys.stderr)
    return 1 if read.problems else 0


def home_archive(args: argparse.Namespace) -> int:
    """Write the user's home as a tar to stdout, from its node (exit 2: no home to read)."""
    from docker.errors import DockerException

    from . import homemove

    settings = Settings.from_env(os.environ)
    if _homes_on_nfs(
        settings, f"home-archive: {args.user}'s home is", "back up that export on the server"
    ):
        return 2
    try:
        proxies = _deployed_node_proxies(settings, "make backup")
        homemove.archive_home(
            args.user, args.db, proxies, settings.docker_network, settings.copy_helper_image,
            sys.stdout.buffer,
        )  # fmt: skip
    except homemove.MoveRefused as error:
        print(f"labhub home-archive: {error}", file=sys.stderr)
        return 2
    except (DockerException, OSError) as error:
        print(
            f"labhub home-archive: {args.user}'s home could not be read: {error}", file=sys.stderr
        )
        return 1
    return 0


def home_restore(args: argparse.Namespace) -> int:
    """Restore the user's home on its node from the tar on stdin (exit 2: refused, nothing
    changed; 1: failed after the old volume was removed, the caller puts it back)."""
    from . import homemove

    settings = Settings.from_env(os.environ)
    if _homes_on_nfs(
        settings, f"home-restore: refused: {args.user}'s home is", "restore it on the server"
    ):
        return 2
    fix = (
        f". Fix: if {args.user} never started, start their server once (the hub places the "
        "home) and stop it; if the node is down, bring it back, or restore onto another "
        "node (make restore ... NODE=<node ID>); or restore the others only (ONLY_USERS "
        "without them)"
    )
    say = functools.partial(print, file=sys.stderr)
    network, image = settings.docker_network, settings.copy_helper_image

    def restore() -> None:
        proxies = _deployed_node_proxies(settings, "make restore")
        quota = _home_quota(settings, args.db, args.user)
        if args.node:
            homemove.restore_onto(
                args.user, args.node, args.db, proxies, homemove.swarm_nodes(), network,
                image, sys.stdin.buffer, args.check, say, quota,
            )  # fmt: skip
            return
        node = homemove.home_node(args.user, homemove.read_home(args.db, args.user), proxies, fix)
        engine = homemove.NodeEngine(node, proxies[node], network, image, quota)
        homemove.restore_home(args.user, engine, sys.stdin.buffer, args.check, say)

    return _exit_status("home-restore", restore)


def print_owner_label() -> int:
    """Print the label that names a user's servers' owner (make restore finds services by it)."""
    print(OWNER_LABEL)
    return 0


def dataset_folders() -> int:
    """Print each dataset of DATASETS that is a host folder (not a volume) as NAME<TAB>FOLDER."""
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    for dataset in settings.datasets:
        if mount_type(dataset.source) == "bind":
            print(f"{dataset.name}\t{dataset.source}")
    return 0


def print_container_prefix(network: str) -> int:
    """Print the user containers' name prefix, so shell never spells it out itself."""
    print(container_name_prefix(network))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labhub", description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check-settings", help="validate the settings in the environment")
    commands.add_parser("z2jh-values", help="print the lab as Zero to JupyterHub values")
    docs = commands.add_parser("settings-docs", help="write .env.example and docs/settings.md")
    docs.add_argument("--root", type=Path, default=Path.cwd(), help="the repository's root")
    docs.add_argument("--check", action="store_true", help="only report differences")
    volumes = commands.add_parser("user-volumes", help="every user's volume name, tab-separated")
    volumes.add_argument("db", help="the hub's SQLite database (read-only)")
    volumes.add_argument("network", help="the stack's DOCKER_NETWORK")
    link = commands.add_parser("course-link", help="an nbgitpuller link, shown to a group")
    link.add_argument("--repo", required=True, help="the repository's https clone URL")
    link.add_argument("--branch", default="main", help="branch to pull (default: main)")
    link.add_argument("--open", default="", help="file to open, relative to the repository")
    link.add_argument("--group", default="", help="JupyterHub group whose pages show the link")
    link.add_argument("--title", default="", help="the link's text (default: the repo's name)")
    link.add_argument("--remove", action="store_true", help="take the link off the group")
    prefix = commands.add_parser(
        "container-prefix", help="what every user container's name starts with"
    )
    prefix.add_argument("network", help="the stack's DOCKER_NETWORK")
    conf = commands.add_parser("egress-conf", help="Swarm mode: the egress proxy's squid.conf")
    conf.add_argument(
        "--never", action="append", default=[], metavar="NET",
        help="an address or network no user reaches (a node, an overlay range)",
    )  # fmt: skip
    move = commands.add_parser("move-home", help="move a user's home to another Swarm node")
    move.add_argument("user", help="the JupyterHub username (their server stopped)")
    move.add_argument("node", help="the Swarm node ID to move to (docker node ls)")
    move.add_argument(
        "--proxy", action="append", default=[], metavar="NODE=URL",
        help="a node's Docker proxy (PROXY_POLICY=node), for the old and the new node; "
        "without it, the node proxies `make up` deployed are found by themselves",
    )  # fmt: skip
    move.add_argument("--keep-old", action="store_true", help="keep the old node's volume")
    move.add_argument(
        "--db", type=Path, default=Path(DEFAULT_DB),
        help="the hub's SQLite database",
    )  # fmt: skip
    archive = commands.add_parser(
        "home-archive", help="a user's home as a tar on stdout, read on its Swarm node"
    )
    archive.add_argument("user", help="the JupyterHub username")
    archive.add_argument(
        "--db", type=Path, default=Path(DEFAULT_DB), help="the hub's SQLite database"
    )
    restore = commands.add_parser(
        "home-restore", help="restore a user's home on its Swarm node from a tar on stdin"
    )
    restore.add_argument("user", help="the JupyterHub username (their servers stopped)")
    restore.add_argument(
        "--check", action="store_true", help="check the archive and the node, change nothing"
    )
    restore.add_argument(
        "--db", type=Path, default=Path(DEFAULT_DB),
        help="the hub's SQLite database that records the home node",
    )  # fmt: skip
    restore.add_argument(
        "--node", default="",
        help="the Swarm node ID (docker node ls) to restore onto instead of the home node, "
        "which becomes the home node (it must be ready and active)",
    )  # fmt: skip
    commands.add_parser("owner-label", help="the label naming a user server's owner")
    commands.add_parser(
        "gpu-inventory", help="the GPUs every node has, as a GPU_INVENTORY file to edit"
    )
    commands.add_parser("disk-usage", help="Swarm mode: every node's homes' usage and limit")
    commands.add_parser("dataset-folders", help="DATASETS' host folders, NAME<TAB>FOLDER")
    args = parser.parse_args(argv)
    if args.command == "check-settings":
        return check_settings()
    if args.command == "z2jh-values":
        return z2jh_values()
    if args.command == "settings-docs":
        return settings_docs(args.root, args.check)
    if args.command == "course-link":
        return course_link(args)
    if args.command == "user-volumes":
        return user_volumes(args.db, args.network)
    if args.command == "move-home":
        return move_home(args)
    if args.command == "egress-conf":
        return egress_conf(args.never)
    if args.command == "home-archive":
        return home_archive(args)
    if args.command == "home-restore":
        return home_restore(args)
    if args.command == "owner-label":
        return print_owner_label()
    if args.command == "gpu-inventory":
        return gpu_inventory()
    if args.command == "disk-usage":
        return disk_usage()
    if args.command == "dataset-folders":
        return dataset_folders()
    if args.command == "container-prefix":
        return print_container_prefix(args.network)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
