"""Shared read-only datasets: one description that the spawner and the Docker proxy both read.

An admin declares datasets in ``DATASETS``: inline JSON in ``.env`` or the absolute path of
a JSON file (inside the containers, e.g. ``/srv/labhub/datasets.json`` from GPU_CONFIG_DIR)::

    [{"name": "mnist", "source": "/srv/datasets/mnist"},
     {"name": "scans", "source": "lab-scans", "groups": ["radiology"]}]

``source`` is an absolute host folder or a named volume. Each dataset is mounted read-only
at ``/datasets/<name>`` in the servers of users in one of its ``groups`` (JupyterHub
groups; no ``groups`` means every user). The spawner mounts `binds_for` a user; the proxy
(`labhub.dockerpolicy.Policy.dataset_binds`) allows exactly `Dataset.bind` of each
declared dataset, so the hub can mount nothing else from the host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .contract import volume_prefix

MOUNT_ROOT = "/datasets"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# A host folder: plain absolute path, no dot segments, nothing Docker's bind syntax reads
# (":"), nothing DockerSpawner's name templates read ("{").
_HOST_PATH = re.compile(r"(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)+")
_VOLUME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_KEYS = {"name", "source", "groups"}
_EXAMPLE = '[{"name": "mnist", "source": "/srv/datasets/mnist", "groups": ["ml101"]}]'


class DatasetsError(ValueError):
    """DATASETS is wrong; the message names the entry and the fix."""


@dataclass(frozen=True)
class Dataset:
    """One declared dataset: what is mounted, where, and for whom."""

    name: str
    source: str
    groups: frozenset[str] = frozenset()

    @property
    def target(self) -> str:
        return f"{MOUNT_ROOT}/{self.name}"

    @property
    def bind(self) -> str:
        """The Docker bind string the spawner sends and the proxy allows: read-only."""
        return f"{self.source}:{self.target}:ro"

    def visible_to(self, groups: Iterable[str]) -> bool:
        return not self.groups or not self.groups.isdisjoint(groups)


def load_datasets(value: str, network: str) -> tuple[Dataset, ...]:
    """DATASETS (empty, inline JSON, or an absolute path to a JSON file), checked.

    ``network`` is DOCKER_NETWORK: a dataset may not be another user's home volume.
    """
    value = value.strip()
    if not value:
        return ()
    where = "DATASETS"
    if value.startswith("/"):
        where = f"DATASETS file {value}"
        try:
            value = Path(value).read_text()
        except OSError as error:
            raise DatasetsError(
                f"{where}: cannot read it ({error.strerror}); mount the file into the hub and "
                "the docker-proxy (GPU_CONFIG_DIR) or write the JSON inline"
            ) from None
    try:
        data = json.loads(value)
    except ValueError as error:
        raise DatasetsError(f"{where} is not JSON ({error}); write it like {_EXAMPLE}") from None
    if not isinstance(data, list):
        raise DatasetsError(f"{where} must be a JSON list of datasets, like {_EXAMPLE}")
    datasets = tuple(_dataset(f"{where}[{i}]", item, network) for i, item in enumerate(data))
    for attribute in ("name", "source"):
        values = [getattr(d, attribute) for d in datasets]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise DatasetsError(f"{where}: {attribute} {twice[0]!r} is declared twice")
    return datasets


def _dataset(where: str, item: object, network: str) -> Dataset:
    if not isinstance(item, dict):
        raise DatasetsError(f"{where} must be an object like {_EXAMPLE[1:-1]}")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise DatasetsError(f"{where}: unknown key {unknown[0]!r}; allowed: name, source, groups")
    name, source, groups = item.get("name"), item.get("source"), item.get("groups", [])
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DatasetsError(
            f"{where}: name {name!r} must be 1-64 lowercase letters, digits, '_', '.', '-' "
            f"(it becomes {MOUNT_ROOT}/<name>)"
        )
    if not isinstance(source, str) or not (
        _HOST_PATH.fullmatch(source) or _VOLUME.fullmatch(source)
    ):
        raise DatasetsError(
            f"{where}: source {source!r} must be an absolute host folder such as "
            "/srv/datasets/mnist (no '..', ':' or spaces) or a Docker volume name"
        )
    if source.startswith(volume_prefix(network)):
        raise DatasetsError(f"{where}: source {source!r} is a user's home volume, not a dataset")
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise DatasetsError(f"{where}: groups must be a list of JupyterHub group names")
    return Dataset(name=name, source=source, groups=frozenset(groups))


def mount_type(source: str) -> str:
    """A dataset's kind of mount: "bind" for a host folder (an absolute path; on a Swarm the
    same path on every node), "volume" for a named volume."""
    return "bind" if source.startswith("/") else "volume"


def binds_for(datasets: Iterable[Dataset], groups: Iterable[str]) -> dict[str, str]:
    """DockerSpawner's `read_only_volumes` for a user in ``groups``: source -> target."""
    member_of = frozenset(groups)
    return {d.source: d.target for d in datasets if d.visible_to(member_of)}
