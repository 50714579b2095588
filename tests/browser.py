"""Debian's Chromium driven by Playwright, trusting exactly a test stack's server key.

One place for how browser tests start the browser; test modules import from here."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from labhub.contract import WORKSPACE_DEFAULT_URL
from stacks import REPO, Stack

from testsupport.browsing import despite_network_changes, network_changed

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
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


def open_the_notebook(
    stack: Stack, page: Any, username: str, kernel: str, failed: list[str]
) -> None:
    """Log `username` in and wait for their JupyterLab with MNIST.ipynb open on `kernel`
    ("TensorFlow-GPU", "PyTorch") and idle, as a student sees it after logging in.

    `failed` is filled by the caller's requestfailed handler: the notebook is opened
    again (twice at most) only when Chromium dropped requests for a network change on
    this host (testsupport.browsing), never for anything else.
    """
    from playwright.sync_api import expect

    def reached(url: str) -> bool:
        return f"/user/{username}/lab" in url or url.startswith("chrome-error://")

    for attempt in range(3):
        stack.browser_login(page, username)
        page.wait_for_url(reached, timeout=300_000)
        if not page.url.startswith("chrome-error://"):
            break
        if attempt == 2:
            raise AssertionError(f"{username}'s lab never loaded: {page.url}")
    notebook = f"{stack.base_url}/user/{username}{WORKSPACE_DEFAULT_URL}"
    idle = page.get_by_role("button", name=f"{kernel} | Idle")
    for attempt in range(3):
        try:
            expect(idle.first).to_be_visible(timeout=90_000)
            break
        except AssertionError:
            if attempt == 2 or not any(network_changed(f) for f in failed):
                raise
            failed.clear()
            # The notebook's own URL, as the hub first sends a student there: a reload
            # would restore JupyterLab's saved layout, which may not have the notebook yet.
            despite_network_changes(partial(page.goto, notebook))
    expect(page.locator(".lm-TabBar-tabLabel", has_text="MNIST.ipynb").first).to_be_visible()
