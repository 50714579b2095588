"""Debian's Chromium driven by Playwright, trusting exactly a test stack's server key.

One place for how browser tests start the browser; test modules import from here."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stacks import REPO, Stack

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
