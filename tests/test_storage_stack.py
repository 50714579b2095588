"""Shared datasets and disk quotas on the real stack (`make up`), the way an admin sets them.

The stack's .env declares a dataset for everyone and one for the JupyterHub group
`radiology`, and QUOTA_ROOT on a btrfs this test makes on a loop device (DISK_QUOTA=40M).
Students' servers are started through the hub's API; what each student can see and do is
tried in their JupyterLab kernel, as the student.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from loopfs import btrfs_with_quotas
from stacks import HTTPS_PORT, STACK, USERS_CREATED, Stack, launched_stack

pytestmark = pytest.mark.e2e
# A stack of its own beside the default one (conftest's), as test_two_stacks does.
NAME, PORT = f"{STACK}store", HTTPS_PORT + 9

READ_DATASETS = """
import os
print(sorted(os.listdir('/datasets')), open('/datasets/mnist/train.idx').read().strip())
try:
    open('/datasets/mnist/mine.txt', 'w').write('x')
except OSError as error:
    print(error.strerror)
"""

FILL_HOME = """
import os
try:
    with open('/home/jovyan/big.bin', 'wb') as f:
        for _ in range(80):
            f.write(b'0' * 1024 * 1024)
            f.flush()
            os.fsync(f.fileno())
except OSError as error:
    print(error.strerror)
os.remove('/home/jovyan/big.bin')
open('/home/jovyan/after.txt', 'w').write('still here')
print(open('/home/jovyan/after.txt').read())
"""


@pytest.fixture(scope="module")
def storage_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    folders = {}
    for name, content in (("mnist", "train.idx"), ("scans", "scan.txt")):
        folders[name] = tmp_path_factory.mktemp(name)
        (folders[name] / content).write_text("pixels\n")
        folders[name].chmod(0o755)
    datasets = [
        {"name": "mnist", "source": str(folders["mnist"])},
        {"name": "scans", "source": str(folders["scans"]), "groups": ["radiology"]},
    ]
    with btrfs_with_quotas() as root:
        extra = {
            "DATASETS": json.dumps(datasets, separators=(",", ":")),
            "QUOTA_ROOT": str(root),
            "DISK_QUOTA": "40M",
        }
        with launched_stack(tmp_path_factory, NAME, PORT, extra) as stack:
            yield stack, root


def test_datasets_and_quota_through_the_hub(storage_stack: tuple[Stack, Path]) -> None:
    stack, root = storage_stack
    admin = stack.admin()
    member, outsider = (f"st{kind}{uuid.uuid4().hex[:5]}" for kind in ("m", "o"))
    for name in (member, outsider):
        USERS_CREATED.append(name)
        created = admin.api("POST", f"/users/{name}")
        assert created.status_code == 201, created.text
    response = admin.api("POST", "/groups/radiology", json={"users": [member]})
    assert response.status_code == 201, response.text
    try:
        for name in (member, outsider):
            admin.start_server(name)

        # The member sees both datasets, the outsider only the one for everyone; no writes.
        member_view = stack.run(admin, member, READ_DATASETS).split("\n")
        assert member_view[:2] == ["['mnist', 'scans'] pixels", "Read-only file system"]
        outsider_view = stack.run(admin, outsider, READ_DATASETS).split("\n")
        assert outsider_view[:2] == ["['mnist'] pixels", "Read-only file system"]

        # 80 MiB into a 40 MiB home: refused by the kernel; the server goes on afterwards.
        filled = stack.run(admin, outsider, FILL_HOME).split("\n")
        assert filled[:2] == ["Disk quota exceeded", "still here"], filled
        homes = sorted(p.name for p in root.iterdir())
        assert len(homes) == 2 and all(h.startswith(f"{NAME}-user-st") for h in homes), homes
    finally:
        # Stopped servers leave the users' network free for the stack's teardown.
        for name in (member, outsider):
            admin.stop_server(name)
