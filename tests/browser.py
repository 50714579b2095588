"""Debian's Chromium driven by Playwright, trusting exactly a test stack's server key.

One place for how browser tests start the browser; test modules import from here."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from labhub.contract import WORKSPACE_DEFAULT_URL
from stacks import REPO, Stack

from testsupport.browsing import despite_network_changes, network_changed

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
# Loads of a lab page while Chromium keeps dropping its requests (see load_lab).
LOADS = 5
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"
)


def spki_pin(cert_file: Path) -> str:
    """Base64 SHA-256 of the server key: Chromium trusts exactly this key, nothing else."""
    der = subprocess.run(
        ["openssl", "x509", "-in", str(cert_file), "-pubkey", "-noout"],
        capture_output=True,
        check=True,
    ).stdout
    key = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=der, capture_output=True, check=True
    ).stdout
    return base64.b64encode(hashlib.sha256(key).digest()).decode()


@contextlib.contextmanager
def chromium(stack: Stack, server_cert: Path | None = None) -> Iterator[Any]:
    """A headless Chromium (a Playwright Browser) that trusts the stack's certificate
    (`server_cert`, by default the stack's localhost.crt), and nothing else."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    pin = spki_pin(server_cert or stack.certs_dir / "localhost.crt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                f"--ignore-certificate-errors-spki-list={pin}",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


def load_lab(page: Any, navigate: Callable[[], object], ready: Callable[[], None]) -> None:
    """``navigate()`` to a JupyterLab, then ``ready()`` (Playwright expectations).

    Chromium on this host drops requests when other containers change its network
    interfaces (testsupport.browsing): a lab whose login, scripts or theme were dropped is
    loaded again by ``navigate()`` (LOADS times at most), as a person would; any other
    failure is the test's finding.
    """
    from playwright.sync_api import expect

    dropped: list[str] = []

    def record(request: Any) -> None:
        dropped.append(str(request.failure))

    page.on("requestfailed", record)
    try:
        for attempt in range(LOADS):
            dropped.clear()
            despite_network_changes(navigate)
            try:
                ready()
                # A dropped stylesheet shows an error dialog that would block every click.
                expect(page.locator(".jp-Dialog")).to_have_count(0)
                return
            except AssertionError:
                if attempt == LOADS - 1 or not any(network_changed(f) for f in dropped):
                    raise
    finally:
        page.remove_listener("requestfailed", record)


def open_the_notebook(stack: Stack, page: Any, username: str, kernel: str) -> None:
    """Log `username` in and wait for their (running) JupyterLab with MNIST.ipynb open on
    `kernel` ("TensorFlow-GPU", "PyTorch") and idle, as a student sees it after logging in.

    Loaded again by its own URL (load_lab): a reload would restore JupyterLab's saved
    layout, which may not have the notebook yet.
    """
    from playwright.sync_api import expect

    lab = re.compile(re.escape(f"{stack.base_url}/user/{username}/lab"))

    def ready() -> None:
        expect(page).to_have_url(lab, timeout=120_000)
        expect(page.get_by_role("button", name=f"{kernel} | Idle").first).to_be_visible(
            timeout=90_000
        )

    load_lab(
        page,
        lambda: stack.browser_login(
            page, username, next_url=f"/user/{username}{WORKSPACE_DEFAULT_URL}"
        ),
        ready,
    )
    expect(page.locator(".lm-TabBar-tabLabel", has_text="MNIST.ipynb").first).to_be_visible()
