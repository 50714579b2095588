"""Students and admins see home disk usage and limit (issue 18), on the real stack (`make up`)
with QUOTA_ROOT on a btrfs this test makes on a loop device (DISK_QUOTA=100M), no GPUs.

A student writes 30 MiB in their home; from inside their container (their kernel, with the
server's own token, at LABHUB_GPU_STATUS_URL) api/me's "home" says so within 10 % of what
the qgroup counts on the host; their JupyterLab's labhub/status words it ("CPU only · home
30 of 100 MB" in the status bar); the admin page's Homes table lists it. In Chromium,
the status bar of a CPU server's JupyterLab says "CPU only · home N of 100 MB".
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import needs_chromium
from labhub import diskquota
from labhub.contract import volume_name_for
from loopfs import stack_with_quotas
from stacks import HTTPS_PORT, STACK, Stack
from test_gpus import chromium_page
from test_lab_status import open_lab
from test_monitoring import WRITE_30M

from testsupport.hubclient import token_session
from testsupport.waiting import wait_until

pytestmark = pytest.mark.e2e
# A stack of its own beside the default one (conftest's), as test_storage_stack does.
NAME, PORT = f"{STACK}home", HTTPS_PORT + 11
MIB = 2**20

READ_ME = """
import json, os, urllib.request
request = urllib.request.Request(
    os.environ["LABHUB_GPU_STATUS_URL"],
    headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]},
)
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=30))["home"]))
"""


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    with stack_with_quotas(tmp_path_factory, NAME, PORT) as (stack, root):
        yield stack, root


def homes_row(page: str, username: str) -> list[str]:
    """The cells of ``username``'s row in the admin page's Homes table."""
    table = page.split('<table id="homes">', 1)[1].split("</table>", 1)[0]
    row = table.split(f'<tr data-user="{username}">', 1)[1].split("</tr>", 1)[0]
    return re.findall(r"<td>([^<]*)</td>", row)


def test_the_student_and_the_admin_see_the_homes_usage(
    quota_stack: tuple[Stack, Path], username: str
) -> None:
    stack, root = quota_stack
    student = stack.login(username)
    student.start_server(username)
    try:
        assert "written" in stack.run(student, username, WRITE_30M)
        # btrfs commits every 30 s: the qgroup (and so api/me) counts the write by then.
        home: dict[str, Any] = wait_until(
            lambda: json.loads(stack.run(student, username, READ_ME).strip().splitlines()[-1]),
            120,
            f"api/me to count {username}'s 30 MiB",
            done=lambda seen: seen and seen["used_bytes"] >= 30 * MIB,
            interval=5,
        )
        on_host = diskquota.usage(root / volume_name_for(username, NAME))
        assert home["used_bytes"] == pytest.approx(30 * MIB, rel=0.1)
        assert home["used_bytes"] == pytest.approx(on_host.used, rel=0.1)
        assert home["limit_bytes"] == on_host.limit == 100 * MIB

        # The student's JupyterLab (the workspace image's server extension).
        lab = token_session(stack.ca_file, student.new_token(username))
        status = lab.get(f"{stack.base_url}/user/{username}/labhub/status", timeout=60).json()
        assert status["gpu"] is False and status["service"] == "ok", status
        assert re.fullmatch(r"home 3\d(\.\d)? of 100 MB", status["home"]), status

        # The admin page's Homes table, through the hub's OAuth in the admin's session.
        admin = stack.admin()
        page = admin.session.get(f"{stack.base_url}/services/gpus/", timeout=60)
        assert page.status_code == 200, page.text[:300]
        user, used, limit, percent = homes_row(page.text, username)
        assert (user, limit) == (username, "100.0 MiB")
        assert float(used.removesuffix(" MiB")) == pytest.approx(30, rel=0.1)
        assert float(percent.removesuffix("%")) == pytest.approx(30, rel=0.1)
        # A student is sent to their own page; the table is not theirs to see.
        mine = student.session.get(f"{stack.base_url}/services/gpus/", timeout=60)
        assert mine.url.endswith("/services/gpus/me") and 'id="homes"' not in mine.text
    finally:
        student.stop_server(username)


# Write 1 MiB at a time until the quota stops it (one MiB more than the limit at most).
FILL = """
import errno
with open("/home/jovyan/fill.bin", "wb") as out:
    try:
        for _ in range(200):
            out.write(bytes(2**20))
            out.flush()
    except OSError as error:
        print("full" if error.errno == errno.EDQUOT else error)
"""


def test_a_student_whose_home_is_full_still_gets_their_server_and_can_free_it(
    quota_stack: tuple[Stack, Path], username: str
) -> None:
    """A home at its 100 MiB quota stopped the next server start ("Disk quota exceeded",
    exit 1): the server wrote its connection files in the home, and jupyter_core its
    ~/.jupyter/migrated marker at every start. The files are in /tmp now
    (JUPYTER_RUNTIME_DIR) and the marker in the image: the server starts, its status says
    the home is full, and the student frees space from a kernel."""
    stack, root = quota_stack
    home = root / volume_name_for(username, NAME)
    student = stack.login(username)
    student.start_server(username)
    assert "full" in stack.run(student, username, FILL)
    student.stop_server(username)
    # Committed (btrfs commits every 30 s), so that the qgroup counts the home full now.
    subprocess.run(["btrfs", "filesystem", "sync", str(root)], check=True)
    assert diskquota.usage(home).used >= 99 * MIB, diskquota.usage(home)
    try:
        student.start_server(username, timeout=300)
        lab = token_session(stack.ca_file, student.new_token(username))
        status = lab.get(f"{stack.base_url}/user/{username}/labhub/status", timeout=60).json()
        assert re.fullmatch(r"home (9\d|10\d)(\.\d)? of 100 MB", status["home"]), status
        freed = "import os; os.remove('/home/jovyan/fill.bin'); print('freed')"
        assert "freed" in stack.run(student, username, freed)
        assert not (home / "fill.bin").exists()
    finally:
        student.stop_server(username)


@pytest.mark.e2e
@needs_chromium
def test_the_status_bar_shows_the_home_in_jupyterlab(
    quota_stack: tuple[Stack, Path], username: str
) -> None:
    from playwright.sync_api import expect

    stack, _ = quota_stack
    student = stack.login(username)
    student.start_server(username)
    try:
        with chromium_page(stack, "home-usage-status") as page:
            item = open_lab(stack, page, username)
            expect(item).to_have_text(re.compile(r"CPU only · home [\d.]+ of 100 MB"))
    finally:
        student.stop_server(username)
