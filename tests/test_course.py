"""Course material without image rebuilds, and idle kernels shut down, on the real stack.

The instructor's git server stands where a campus GitLab would: a container on a LAN
address of its own (a veth pair into its network namespace, 192.168.<port % 256>.6/30),
not on the users' network, where netguard lets students reach only the hub and the proxy.
The stack allows that one address with USER_EGRESS_ALLOW, as docs/course.md tells an
admin to. The server speaks git's "smart" HTTP protocol, as GitLab does: git's own
`git http-backend`, run as a CGI program by Python's http.server (nbgitpuller clones
shallow, which the static "dumb" protocol cannot serve).

A student opens the nbgitpuller link and gets the repository in their home; after the
instructor's next commit, the same link merges it without overwriting the student's own
edit (nbgitpuller's rule). In a real browser, the link lands in JupyterLab on the notebook.
"""

from __future__ import annotations

import contextlib
import html
import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import docker
import pytest
import requests
from browser import ARTIFACTS, chromium, needs_chromium
from labhub.course import nbgitpuller_link
from stacks import HTTPS_PORT, STACK, USERS_CREATED, VERSION, Stack, launched_stack

from testsupport.hubclient import HubClient, Kernel, token_session, user_websocket

# A stack of its own (its egress rule and kernel timeout), beside the session's stack.
NAME, PORT = f"{STACK}course", HTTPS_PORT + 3

pytestmark = pytest.mark.e2e

OCTET = HTTPS_PORT & 255
# A /30 of its own (test_isolation's stand-in LAN host uses the .0/30 next to it).
HOST_SIDE, GIT_IP = f"192.168.{OCTET}.5", f"192.168.{OCTET}.6"
GIT_PORT = 8000
REPO_URL = f"http://{GIT_IP}:{GIT_PORT}/cgi-bin/git/ml-course.git"
# Short, so that the culling test waits seconds, not the default half hour.
KERNEL_IDLE_TIMEOUT = 20

NOTEBOOK = {
    "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Week 1"]}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@dataclass
class CampusGit:
    """The instructor's repository on the stand-in campus git server."""

    container: Any

    def sh(self, script: str) -> str:
        code, output = self.container.exec_run(["bash", "-euo", "pipefail", "-c", script])
        text = output.decode(errors="replace")
        assert code == 0, f"{script}\n{text}"
        return text

    def commit(self, files: dict[str, str], message: str) -> None:
        """The instructor commits `files` and pushes them to the served repository."""
        writes = " && ".join(
            f'mkdir -p "$(dirname {shlex.quote(name)})" && '
            f"printf %s {shlex.quote(content)} > {shlex.quote(name)}"
            for name, content in files.items()
        )
        self.sh(
            f"cd /tmp/work && {writes} && git add -A && "
            f"git -c user.name=Instructor -c user.email=prof@uni.example "
            f"commit -q -m {shlex.quote(message)} && git push -q origin main"
        )


@contextlib.contextmanager
def campus_git_server() -> Iterator[CampusGit]:
    """A git server container with no Docker network, plugged into the host by a veth
    pair on a private address: reachable the way a LAN host is, and only that way."""
    api = docker.from_env()
    outside, inside = f"lhg{HTTPS_PORT}", f"lhgp{HTTPS_PORT}"
    container = api.containers.run(
        f"labhub/workspace:{VERSION}",
        ["sleep", "3600"],
        name=f"{STACK}-campus-git",
        network_mode="none",
        detach=True,
        remove=True,
    )

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    try:
        container.reload()
        pid = str(container.attrs["State"]["Pid"])
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", pid)
        ip("addr", "add", f"{HOST_SIDE}/30", "dev", outside)
        ip("link", "set", outside, "up")
        for args in (
            ("addr", "add", f"{GIT_IP}/30", "dev", inside),
            ("link", "set", inside, "up"),
            ("route", "add", "default", "via", HOST_SIDE),
        ):
            subprocess.run(
                ["nsenter", "-t", pid, "-n", "ip", *args],
                check=True,
                capture_output=True,
                timeout=30,
            )
        git = CampusGit(container)
        git.sh(
            "git init -q -b main /tmp/work && mkdir -p /tmp/srv/cgi-bin && "
            "cp /usr/lib/git-core/git-http-backend /tmp/srv/cgi-bin/git && "
            "git init -q --bare -b main /tmp/srv/ml-course.git && "
            "git -C /tmp/work remote add origin /tmp/srv/ml-course.git"
        )
        git.commit(
            {
                "README.md": "Machine learning, term 1\n",
                "exercise.py": "learning_rate = 0.1\n",
                "week1.ipynb": json.dumps(NOTEBOOK),
            },
            "week 1",
        )
        container.exec_run(
            ["python3", "-m", "http.server", "--cgi", str(GIT_PORT), "--directory", "/tmp/srv"],
            environment={"GIT_PROJECT_ROOT": "/tmp/srv", "GIT_HTTP_EXPORT_ALL": "1"},
            detach=True,
        )
        # Control: the host reaches it, so the path exists (a busy host starts it slowly).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                advert = requests.get(
                    f"{REPO_URL}/info/refs", params={"service": "git-upload-pack"}, timeout=5
                )
                if b"refs/heads/main" in advert.content:
                    break
            time.sleep(0.5)
        else:
            raise AssertionError("the stand-in git server does not answer from the host")
        yield git
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True, timeout=30)
        container.remove(force=True)


@pytest.fixture(scope="module")
def campus_git() -> Iterator[CampusGit]:
    with campus_git_server() as git:
        yield git


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, campus_git: CampusGit) -> Iterator[Stack]:
    extra = {"USER_EGRESS_ALLOW": f"{GIT_IP}/32", "KERNEL_IDLE_TIMEOUT": str(KERNEL_IDLE_TIMEOUT)}
    with launched_stack(tmp_path_factory, NAME, PORT, extra) as running:
        yield running


def student() -> str:
    name = f"student-{uuid.uuid4().hex[:8]}"
    USERS_CREATED.append(name)
    return name


def home_file(http: requests.Session, stack: Stack, username: str, path: str) -> str:
    response = http.get(
        f"{stack.base_url}/user/{username}/api/contents/{path}",
        params={"type": "file", "format": "text"},
        timeout=60,
    )
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text[:300]}"
    return str(response.json()["content"])


def pull(client: HubClient, link: str) -> list[dict[str, Any]]:
    """The student opens the link; nbgitpuller's page then does what its script does:
    read the pull's progress from /git-pull/api (an event stream) until it ends."""
    page = client.session.get(link, timeout=120)
    assert page.status_code == 200, page.text[:300]
    assert urlsplit(page.url).path.endswith("/git-pull"), page.url
    assert "nbgitpuller" in page.text
    query = parse_qs(urlsplit(page.url).query)
    params = {key: query[key][0] for key in ("repo", "branch", "targetpath")}
    events = []
    with client.session.get(
        page.url.split("?")[0] + "/api", params=params, stream=True, timeout=300
    ) as stream:
        assert stream.status_code == 200, stream.text[:300]
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    assert events and events[-1]["phase"] == "finished", events[-3:]
    return events


def test_a_link_pulls_the_course_and_a_second_pull_keeps_the_students_edit(
    stack: Stack, campus_git: CampusGit
) -> None:
    username = student()
    client = stack.login(username)
    client.start_server(username)
    http = token_session(stack.ca_file, client.new_token(username))
    link = nbgitpuller_link(stack.base_url, REPO_URL, "main", "week1.ipynb")

    pull(client, link)
    assert home_file(http, stack, username, "ml-course/exercise.py") == "learning_rate = 0.1\n"
    assert json.loads(home_file(http, stack, username, "ml-course/week1.ipynb")) == NOTEBOOK

    # The student edits the exercise; the instructor changes the same line, the README,
    # and adds week 2.
    mine = "learning_rate = 0.01  # tuned by the student\n"
    saved = http.put(
        f"{stack.base_url}/user/{username}/api/contents/ml-course/exercise.py",
        json={"type": "file", "format": "text", "content": mine},
        timeout=60,
    )
    assert saved.status_code == 200, saved.text[:300]
    campus_git.commit(
        {
            "exercise.py": "learning_rate = 0.05\n",
            "README.md": "Machine learning, term 1 (week 2 is out)\n",
            "week2/notes.md": "Convolutions\n",
        },
        "week 2",
    )

    pull(client, link)
    assert home_file(http, stack, username, "ml-course/exercise.py") == mine
    assert "week 2 is out" in home_file(http, stack, username, "ml-course/README.md")
    assert home_file(http, stack, username, "ml-course/week2/notes.md") == "Convolutions\n"


def start_busy(kernel: Kernel, seconds: int) -> None:
    """Send a long cell to `kernel` and leave it running (its websocket closed)."""
    ws = user_websocket(
        kernel.http, kernel.base_url, kernel.username, f"api/kernels/{kernel.id}/channels", 60
    )
    try:
        header = {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "execute_request",
            "username": kernel.username,
            "session": uuid.uuid4().hex,
            "version": "5.3",
        }
        content = {"code": f"import time; time.sleep({seconds})", "silent": False}
        message = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
        ws.send(json.dumps({**message, "channel": "shell"}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the kernel says it is busy with it
            reply = json.loads(ws.recv())
            if (
                reply.get("parent_header", {}).get("msg_id") == header["msg_id"]
                and reply["msg_type"] == "status"
                and reply["content"]["execution_state"] == "busy"
            ):
                return
        raise AssertionError("the kernel never started the long cell")
    finally:
        ws.close()


def kernels(kernel: Kernel) -> dict[str, str]:
    response = kernel.http.get(kernel.api, timeout=60)
    response.raise_for_status()
    return {k["id"]: k["execution_state"] for k in response.json()}


def test_an_idle_kernel_is_shut_down_and_a_busy_one_stays(stack: Stack) -> None:
    username = student()
    client: HubClient = stack.login(username)
    client.start_server(username)
    token = client.new_token(username)
    idle = Kernel(stack.base_url, stack.ca_file, username, token)
    busy = Kernel(stack.base_url, stack.ca_file, username, token)
    assert idle.execute("print(6 * 7)").strip() == "42"
    start_busy(busy, 600)
    started = time.monotonic()

    # Culled after KERNEL_IDLE_TIMEOUT, checked every quarter of it: give it twice.
    while idle.id in kernels(idle) and time.monotonic() - started < 2 * KERNEL_IDLE_TIMEOUT + 30:
        time.sleep(2)
    gone_after = time.monotonic() - started
    left = kernels(busy)
    assert idle.id not in left, f"the idle kernel is still there after {gone_after:.0f} s"
    assert gone_after >= KERNEL_IDLE_TIMEOUT - 5, f"culled too early, after {gone_after:.0f} s"
    assert left.get(busy.id) == "busy", left
    # The server itself stays up: only the kernel went.
    assert client.api("GET", f"/users/{username}").json()["servers"][""]["ready"]
    busy.shutdown()


def test_an_instructor_pushes_a_link_to_a_group_and_only_its_members_see_it(
    stack: Stack,
) -> None:
    member, outsider = student(), student()
    admin = stack.admin()
    group = f"ml-{uuid.uuid4().hex[:6]}"
    assert admin.api("POST", f"/groups/{group}").status_code == 201
    for name in (member, outsider):  # the hub knows a user once they have logged in
        login = stack.client().login(name, stack.ensure_account(name), follow=False)
        assert login.status_code == 302, login.text[:300]
    added = admin.api("POST", f"/groups/{group}/users", json={"users": [member]})
    assert added.status_code == 200, added.text
    title = "Week 1 <b>now</b>"
    push = [f"REPO={REPO_URL}", "OPEN=week1.ipynb", f"GROUP={group}", f"TITLE={title}"]

    done = stack.make("course-link", *push)
    link = nbgitpuller_link(stack.base_url, REPO_URL, "main", "week1.ipynb")
    assert link in done.stdout.splitlines(), done.stdout
    assert f"shown on the hub's pages to group '{group}' ({member})" in done.stdout

    def home_page(username: str) -> str:
        client = stack.client()
        login = client.login(username, stack.password_of(username), follow=False)
        assert login.status_code == 302, login.text[:300]
        page = client.session.get(client.url("/hub/home"), timeout=60)
        assert page.status_code == 200, page.text[:300]
        return page.text

    page = home_page(member)
    assert f'href="{html.escape(link)}"' in page
    assert "Week 1 &lt;b&gt;now&lt;/b&gt;" in page and "<b>now</b>" not in page
    assert "Course material" not in home_page(outsider)

    stack.make("course-link", *push, "REMOVE=1")
    assert "Course material" not in home_page(member)


def test_a_link_for_a_group_that_does_not_exist_names_the_problem(stack: Stack) -> None:
    done = stack.make("course-link", f"REPO={REPO_URL}", "GROUP=no-such-group", check=False)
    assert done.returncode != 0
    assert "there is no group 'no-such-group' in the hub" in done.stderr


@needs_chromium
def test_clicking_the_link_in_a_browser_opens_the_notebook(
    stack: Stack, campus_git: CampusGit
) -> None:
    """The page's own script pulls, then sends the student to the notebook.

    Containers starting on this host (other tests') change its network interfaces and
    Chromium aborts requests in flight (ERR_NETWORK_CHANGED): only that is tried again
    (a pull is safe to repeat).
    """
    from playwright.sync_api import Error

    username = student()
    stack.login(username).start_server(username)
    link = nbgitpuller_link(stack.base_url, REPO_URL, "main", "week1.ipynb")
    with chromium(stack) as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        failed: list[str] = []
        page.on("requestfailed", lambda request: failed.append(str(request.failure)))
        try:
            stack.browser_login(page, username)
            for attempt in range(4):
                try:
                    page.goto(link)
                    page.wait_for_url(
                        f"**/user/{username}/lab/tree/ml-course/week1.ipynb*", timeout=120_000
                    )
                    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=90_000)
                    return
                except Error as error:
                    changed = "ERR_NETWORK_CHANGED" in str(error) or any(
                        "ERR_NETWORK_CHANGED" in f for f in failed
                    )
                    if not changed or attempt == 3:
                        raise
                    failed.clear()
                    time.sleep(5)  # until the host's interfaces settle
        finally:
            page.screenshot(path=str(ARTIFACTS / "course-link-in-browser.png"))
