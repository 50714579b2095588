"""A student's first hour, done the way the student does it: a terminal from the
launcher runs the workspace's tools, the notebook trains, and the launcher's TensorBoard
shows the runs from both. The TensorBoard screenshot goes to test-artifacts/ (and, by
hand, into docs/user-guide.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import ARTIFACTS, CHROMIUM, chromium
from stacks import Stack

from testsupport.hubclient import HubClient, Kernel, Terminal
from testsupport.waiting import wait_until

pytestmark = pytest.mark.e2e

# Runs every code cell of the student's own copy of the notebook, in its folder, in the
# kernel the notebook asks for, on a small subset (the notebook reads these variables).
RUN_THE_NOTEBOOK = """
import json as _json, os as _os
_os.environ.update(MNIST_NOTEBOOK_SUBSET="600", MNIST_NOTEBOOK_EPOCHS="1", MPLBACKEND="Agg")
_os.chdir(_os.path.expanduser("~/mnist"))
# Underscored names: the notebook's own cells share this namespace (it has a `result`).
for _cell in _json.load(open("MNIST.ipynb"))["cells"]:
    if _cell["cell_type"] == "code":
        _ran = get_ipython().run_cell("".join(_cell["source"]))
        if not _ran.success:
            raise RuntimeError(f"cell failed: {_ran.error_in_exec or _ran.error_before_exec}")
print("notebook ran")
"""


def tensorboard_runs(client: HubClient, stack: Stack, username: str, token: str) -> list[str]:
    response = client.session.get(
        stack.base_url + f"/user/{username}/tensorboard/data/runs",
        headers={"Authorization": f"token {token}"},
        timeout=180,
    )
    assert response.status_code == 200, response.text[:300]
    return list(response.json())


def test_terminal_notebook_and_tensorboard_work_together(stack: Stack, username: str) -> None:
    client = stack.login(username)
    client.start_server(username)
    token = client.new_token(username)

    terminal = Terminal(stack.base_url, stack.ca_file, username, token)
    try:
        screen = terminal.run(
            "command -v mnist-train tensorboard && "
            "mnist-train --recipe fast --subset 600 --epochs 1 --verbose 2 "
            "&& echo TRAINED-$((40 + 2))",
            done="TRAINED-42",
            timeout=600,
        )
    finally:
        terminal.close()
    assert "/opt/venv/bin/mnist-train" in screen and "/opt/venv/bin/tensorboard" in screen
    assert "test accuracy" in screen

    kernel = Kernel(stack.base_url, stack.ca_file, username, token)
    try:
        assert "notebook ran" in kernel.execute(RUN_THE_NOTEBOOK, timeout=900)
    finally:
        kernel.shutdown()

    # The launcher's TensorBoard tile reads ~/logs: both the terminal's and the
    # notebook's runs must be listed (it re-reads the folder every 15 s).
    wanted = ("mnist-train-fast-", "notebook-lenet/", "notebook-strong/")
    wait_until(
        lambda: tensorboard_runs(client, stack, username, token),
        120,
        f"TensorBoard to list {wanted}",
        done=lambda runs: all(any(run.startswith(w) for run in runs) for w in wanted),
        interval=5,
    )
    if Path(CHROMIUM).exists():
        screenshot_tensorboard(stack, username, token, ARTIFACTS / "tensorboard-runs.png")
    client.stop_server(username)


def screenshot_tensorboard(stack: Stack, username: str, token: str, path: Path) -> None:
    """What the student sees after clicking the tile, kept for docs/user-guide.md."""
    with chromium(stack) as browser:
        page = browser.new_page(
            viewport={"width": 1400, "height": 900},
            extra_http_headers={"Authorization": f"token {token}"},
        )
        page.goto(stack.base_url + f"/user/{username}/tensorboard/#timeseries")
        page.get_by_text("epoch_accuracy").first.wait_for(timeout=120_000)
        page.screenshot(path=str(path))
