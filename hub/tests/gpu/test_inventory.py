"""Inventory: the declared file (schema errors that name the field and fix) and detection."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from labhub.gpu.inventory import (
    Device,
    InventoryError,
    detect_inventory,
    load_inventory,
    read_utilisation,
)

pytestmark = pytest.mark.unit

SMI_CSV = "0, GPU-1111, NVIDIA A100-SXM4-40GB, 40960\n1, GPU-2222, NVIDIA RTX A6000, 49140\n"
SMI_L = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1111)
  MIG 3g.20gb     Device  0: (UUID: MIG-aaaa)
  MIG 1g.5gb      Device  1: (UUID: MIG-bbbb)
GPU 1: NVIDIA RTX A6000 (UUID: GPU-2222)
"""


def fake_smi(outputs: dict[str, str], rc: int = 0) -> Any:
    def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        key = next(k for k in outputs if k in " ".join(args))
        return subprocess.CompletedProcess(args, rc, outputs[key], "driver mismatch")

    return run


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(data))
    return path


def test_load_declared_inventory(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "devices": [
                {"id": "0", "model": "A100", "memory_mib": 40960},
                {"id": "1", "model": "T4", "memory_mib": 15360, "policy": "shared",
                 "max_holders": 4},
            ]
        },
    )  # fmt: skip
    devices = load_inventory(path)
    assert devices == (
        Device(id="0", model="A100", memory_mib=40960),
        Device(id="1", model="T4", memory_mib=15360, policy="shared", max_holders=4,
               memory_cap_mib=3840),
    )  # fmt: skip
    assert [d.capacity for d in devices] == [1, 4]


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        pytest.param({"id": "0", "model": "A", "memory_mib": 1, "colour": "red"},
                     "devices[0]: Additional properties", id="unknown-key"),
        pytest.param({"id": "0", "model": "A", "memory_mib": 1, "policy": "greedy"},
                     "devices[0].policy", id="bad-policy"),
        pytest.param({"id": "gpu0", "model": "A", "memory_mib": 1},
                     "devices[0].id", id="bad-id"),
        pytest.param({"id": "0", "model": "A", "memory_mib": 100, "policy": "shared",
                      "max_holders": 4, "memory_cap_mib": 50},
                     "lower max_holders or memory_cap_mib", id="overcommitted-share"),
        pytest.param({"id": "0", "model": "A", "memory_mib": 100, "max_holders": 2},
                     "set policy to 'shared'", id="exclusive-with-holders"),
    ],
)  # fmt: skip
def test_bad_inventory_names_field_and_fix(
    tmp_path: Path, device: dict[str, object], expected: str
) -> None:
    with pytest.raises(InventoryError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_inventory(write(tmp_path, {"devices": [device]}))


def test_unknown_key_lists_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="allowed keys here: id, max_holders"):
        load_inventory(write(tmp_path, {"devices": [{"id": "0", "mdl": "A", "memory_mib": 1}]}))


def test_duplicate_and_missing_file(tmp_path: Path) -> None:
    twice = {"id": "0", "model": "A", "memory_mib": 1}
    with pytest.raises(InventoryError, match="appears twice"):
        load_inventory(write(tmp_path, {"devices": [twice, twice]}))
    with pytest.raises(InventoryError, match="GPU_INVENTORY=auto"):
        load_inventory(tmp_path / "missing.json")


def test_detect_whole_gpus_and_mig() -> None:
    devices = detect_inventory(fake_smi({"--query-gpu": SMI_CSV, "-L": SMI_L}))
    assert [(d.id, d.uuid, d.memory_mib, d.policy) for d in devices] == [
        ("0:0", "MIG-aaaa", 20480, "exclusive"),
        ("0:1", "MIG-bbbb", 5120, "exclusive"),
        ("1", "GPU-2222", 49140, "exclusive"),
    ]
    assert devices[0].model == "NVIDIA A100-SXM4-40GB MIG 3g.20gb"


def test_no_nvidia_smi_is_cpu_only() -> None:
    def missing(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(args[0])

    assert detect_inventory(missing) == ()
    assert read_utilisation(missing) == {}


def test_failing_nvidia_smi_is_cpu_only_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert detect_inventory(fake_smi({"--query-gpu": ""}, rc=9)) == ()
    assert "driver mismatch" in caplog.text


def test_read_utilisation() -> None:
    util = read_utilisation(fake_smi({"--query-gpu": "0, 87, 30000\n1, [N/A], 0\n"}))
    assert util["0"].gpu_percent == 87 and util["0"].memory_used_mib == 30000
    assert "1" not in util
