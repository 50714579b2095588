"""The GPUs of the host: declared in a JSON file or detected with ``nvidia-smi``.

Seams for the wiring:

- ``GPU_INVENTORY=/path/inventory.json`` -> :func:`load_inventory` (validated against
  ``inventory.schema.json``; errors name the field and the fix).
- ``GPU_INVENTORY=auto`` -> :func:`detect_inventory` (every device ``exclusive``; a host
  without ``nvidia-smi`` is CPU only, no error). To give detected devices a ``shared`` policy,
  run ``python -m labhub.gpu.inventory > inventory.json``, edit, and point GPU_INVENTORY at it.
- :func:`read_utilisation` gives live utilisation for the admin page (empty without NVML).

``run`` is injectable everywhere so the tests need no GPU. Calls are blocking: call them
once at start-up, or through an executor from async code.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

import jsonschema

log = logging.getLogger(__name__)

Policy = Literal["exclusive", "shared"]
Runner = Callable[..., "subprocess.CompletedProcess[str]"]

NVIDIA_SMI_TIMEOUT_S = 20
# Swarm mode: the routes at which each node's Docker proxy answers with nvidia-smi there
# (labhub.dockerproxy): its GPUs' utilisation (`utilisation_json`, for labhub.gpu.readings)
# and its detected devices (`inventory_json`, for `labhub gpu-inventory`).
NODE_UTILISATION_ROUTE = "/labhub/gpu-utilisation"
NODE_DEVICES_ROUTE = "/labhub/gpu-devices"
_QUERY_FIELDS = "index,uuid,name,memory.total"
_GPU_LINE = re.compile(r"^GPU (?P<index>\d+): (?P<model>.+?) \(UUID: (?P<uuid>[^)]+)\)$")
_MIG_LINE = re.compile(
    r"^\s+MIG (?P<profile>\S+)\s+Device\s+(?P<index>\d+): \(UUID: (?P<uuid>[^)]+)\)$"
)
_MIG_MEMORY = re.compile(r"\.(?P<gb>\d+)gb$")


class InventoryError(ValueError):
    """The inventory file is wrong; the message names the field and the fix."""


@dataclass(frozen=True)
class Device:
    """One schedulable GPU or MIG instance and its sharing policy."""

    id: str
    model: str
    memory_mib: int
    uuid: str = ""
    policy: Policy = "exclusive"
    max_holders: int = 1
    memory_cap_mib: int | None = None
    node: str = ""
    """The Swarm node the device is on (its hostname or node ID); '' on one host."""

    def __post_init__(self) -> None:
        where = f"device {self.key!r}"
        if self.policy == "exclusive":
            if self.max_holders != 1:
                raise InventoryError(
                    f"{where}: max_holders={self.max_holders} with policy 'exclusive'; "
                    "remove max_holders or set policy to 'shared'"
                )
            if self.memory_cap_mib is not None:
                raise InventoryError(
                    f"{where}: memory_cap_mib is only for policy 'shared'; remove it "
                    "or set policy to 'shared'"
                )
            return
        if self.memory_cap_mib is None:
            object.__setattr__(self, "memory_cap_mib", self.memory_mib // self.max_holders)
        cap = cast(int, self.memory_cap_mib)
        if cap < 1 or cap * self.max_holders > self.memory_mib:
            raise InventoryError(
                f"{where}: max_holders ({self.max_holders}) x memory_cap_mib ({cap}) exceeds "
                f"memory_mib ({self.memory_mib}); lower max_holders or memory_cap_mib"
            )

    @property
    def key(self) -> str:
        """What the scheduler books: the device on its node (``0@gpu-a``), or on one host
        its id alone. Two nodes' GPU 0 are two devices."""
        return device_key(self.id, self.node)

    @property
    def capacity(self) -> int:
        """How many servers may hold this device at once."""
        return self.max_holders if self.policy == "shared" else 1


Inventory = tuple[Device, ...]


def device_key(device_id: str, node: str = "") -> str:
    """A device's booking key: ``<id>@<node>`` on a Swarm, ``<id>`` on one host."""
    return f"{device_id}@{node}" if node else device_id


def split_key(key: str) -> tuple[str, str]:
    """(device id as the node's NVIDIA runtime takes it, node) of a booking key."""
    device_id, _, node = key.partition("@")
    return device_id, node


def nodes_of(inventory: Inventory) -> frozenset[str]:
    """The nodes an inventory names ('' for a single host's devices)."""
    return frozenset(d.node for d in inventory)


def schema() -> dict[str, Any]:
    text = resources.files("labhub.gpu").joinpath("inventory.schema.json").read_text()
    return cast(dict[str, Any], json.loads(text))


def _field_path(path: Sequence[object]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "(top level)"


def validate_json(data: object, schema: dict[str, Any], source: str) -> None:
    """Validate ``data`` against a JSON schema; raise :class:`InventoryError` on the first error.

    The message names the file, the field path (``devices[1].policy``) and what the schema
    expects, so the admin knows what to change.
    """
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    err = errors[0]
    field = _field_path(list(err.absolute_path))
    hint = err.schema.get("description", "") if isinstance(err.schema, dict) else ""
    if err.validator == "additionalProperties":
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        fix = f"remove the unknown key; allowed keys here: {allowed}"
    else:
        fix = f"expected: {hint}" if hint else "see the schema"
    raise InventoryError(f"{source}: {field}: {err.message}; {fix}")


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate a declared inventory file (see ``inventory.schema.json``)."""
    source = str(path)
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InventoryError(
            f"{source}: no such file; create it (python -m labhub.gpu.inventory prints one) "
            "or set GPU_INVENTORY=auto"
        ) from None
    except json.JSONDecodeError as e:
        raise InventoryError(f"{source}: not valid JSON ({e}); fix the syntax") from None
    validate_json(data, schema(), source)
    devices = tuple(Device(**item) for item in data["devices"])
    seen: set[str] = set()
    for device in devices:
        if device.key in seen:
            where = f" on node {device.node!r}" if device.node else ""
            raise InventoryError(
                f"{source}: device id {device.id!r}{where} appears twice; keep one"
            )
        seen.add(device.key)
    if len({bool(d.node) for d in devices}) > 1:
        raise InventoryError(
            f"{source}: some devices name a node and some do not; on a Swarm give every "
            "device its node, on one host none"
        )
    return devices


def _run(run: Runner, args: list[str]) -> str | None:
    try:
        result = run(
            args, capture_output=True, text=True, check=False, timeout=NVIDIA_SMI_TIMEOUT_S
        )
    except FileNotFoundError:
        return None
    if result.returncode != 0:
        log.warning(
            "%s failed (rc=%s): %s; treating the host as CPU only. Check the NVIDIA driver.",
            " ".join(args),
            result.returncode,
            result.stderr.strip(),
        )
        return None
    return result.stdout


def _mig_memory_mib(profile: str) -> int:
    match = _MIG_MEMORY.search(profile)
    return int(match["gb"]) * 1024 if match else 0


def detect_inventory(run: Runner = subprocess.run) -> Inventory:
    """Detect GPUs with ``nvidia-smi``; MIG instances replace their parent GPU.

    Every device is ``exclusive``. No ``nvidia-smi`` (or a failing one) means no GPU.
    A MIG instance's memory is read from its profile name (``1g.10gb`` -> 10240 MiB).
    """
    csv = _run(run, ["nvidia-smi", f"--query-gpu={_QUERY_FIELDS}", "--format=csv,noheader,nounits"])
    if csv is None:
        return ()
    gpus: dict[str, Device] = {}
    for line in csv.splitlines():
        if not line.strip():
            continue
        index, uuid, model, memory = (part.strip() for part in line.split(","))
        gpus[index] = Device(id=index, uuid=uuid, model=model, memory_mib=int(memory))
    listing = _run(run, ["nvidia-smi", "-L"]) or ""
    migs: dict[str, list[Device]] = {}
    parent: str | None = None
    for line in listing.splitlines():
        if gpu := _GPU_LINE.match(line):
            parent = gpu["index"]
        elif (mig := _MIG_LINE.match(line)) and parent in gpus:
            base = gpus[parent]
            migs.setdefault(parent, []).append(
                Device(
                    id=f"{parent}:{mig['index']}",
                    uuid=mig["uuid"],
                    model=f"{base.model} MIG {mig['profile']}",
                    memory_mib=_mig_memory_mib(mig["profile"]) or base.memory_mib,
                )
            )
    devices: list[Device] = []
    for index, gpu_device in gpus.items():
        devices.extend(migs.get(index, [gpu_device]))
    return tuple(devices)


@dataclass(frozen=True)
class Utilisation:
    """Live figures for one whole GPU, from NVML through nvidia-smi."""

    gpu_percent: int
    memory_used_mib: int


def read_utilisation(run: Runner = subprocess.run) -> dict[str, Utilisation]:
    """GPU index -> utilisation; empty when nvidia-smi is missing (no error)."""
    csv = _run(
        run,
        [
            "nvidia-smi",
            "--query-gpu=index,utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ],
    )
    out: dict[str, Utilisation] = {}
    for line in (csv or "").splitlines():
        if not line.strip():
            continue
        index, util, used = (part.strip() for part in line.split(","))
        if util.isdigit() and used.isdigit():
            out[index] = Utilisation(gpu_percent=int(util), memory_used_mib=int(used))
    return out


def utilisation_json(found: dict[str, Utilisation]) -> dict[str, list[int]]:
    """A node's utilisation as its Docker proxy answers it: {"index": [percent, used MiB]}."""
    return {index: [u.gpu_percent, u.memory_used_mib] for index, u in found.items()}


def utilisation_from_json(answer: object) -> dict[str, Utilisation]:
    """`utilisation_json`'s answer read back; ValueError when it is not one."""
    if not isinstance(answer, dict):
        raise ValueError(f"not a JSON object: {answer!r:.100}")
    out = {}
    for index, figures in answer.items():
        if not (
            isinstance(figures, list)
            and len(figures) == 2
            and all(isinstance(f, int) and not isinstance(f, bool) for f in figures)
        ):
            raise ValueError(f"GPU {index!r}: {figures!r:.100} is not [percent, MiB used]")
        out[str(index)] = Utilisation(gpu_percent=figures[0], memory_used_mib=figures[1])
    return out


def inventory_json(inventory: Inventory) -> dict[str, list[dict[str, Any]]]:
    """An inventory as a file declares it, to edit: the shared-policy fields left out, and
    the node only where there is one."""
    devices = [asdict(d) for d in inventory]
    for device in devices:
        device.pop("max_holders")
        device.pop("memory_cap_mib")
        if not device["node"]:
            device.pop("node")
    return {"devices": devices}


def main() -> None:
    """Print the detected inventory as a JSON file to edit (python -m labhub.gpu.inventory)."""
    json.dump(inventory_json(detect_inventory()), sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
