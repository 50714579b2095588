"""The front door's limits and its certificates, each shown by attack.

- `scripts/make-certs.sh` run as an unprivileged user (as `make up` is on most hosts)
  leaves no key readable by anyone else, and its local CA can only vouch for the lab's
  own names: a certificate it signs for another site fails verification.
- The proxy image with its defaults (LOGIN_RATE_LIMIT and body sizes left unset, the
  key owned by `nobody`, mode 0600) in front of the test stack's hub: a large body to
  the login form is refused, a large notebook save goes through, and a burst of login
  attempts from one address gets 429 while a login after the window works.
- Path mode (the default, SUBDOMAINS=false): a page a student serves runs on the hub's
  origin; in a real browser it acts as the admin who opens it (the risk the docs state).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from origin_probe import (
    CHROMIUM,
    admin_follows_the_link,
    forget_tokens_made_by_the_page,
    serving_code,
)
from origin_probe import PORT as PROBE_PORT
from stacks import REPO, STACK, Stack

from testsupport.hubclient import HubClient
from testsupport.waiting import wait_until

# The proxy with the image's defaults listens next to the test stack's own port.
DEFAULTS_PORT = int(os.environ.get("LABHUB_TEST_HTTPS_PORT", "18443")) + 1
MAKE_CERTS = REPO / "scripts" / "make-certs.sh"


def make_certs_as_nobody(
    certs: Path, domain: str, lan: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run make-certs.sh as `nobody` (who cannot chgrp to nginx's group) into `certs`.

    The script goes in on standard input: the checkout may sit in a folder `nobody`
    cannot read (CI clones into a `mktemp -d` folder, mode 0700)."""
    certs.mkdir(exist_ok=True)
    os.chown(certs, 65534, 65534)
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "bash", "-s"],
        input=MAKE_CERTS.read_text(),
        env={
            "PATH": os.environ["PATH"],
            "CERTS_DIR": str(certs),
            "DOMAIN": domain,
            "LAN_ADDRESSES": lan,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def sign_with_the_ca(certs: Path, san: str) -> Path:
    """What someone holding the CA key could make: a certificate for any name."""
    name = re.sub(r"\W", "_", san)
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        "/CN=rogue",
        cwd=certs,
    ).check_returncode()
    ext = certs / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "labhub-ca.crt",
        "-CAkey",
        "labhub-ca.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-out",
        f"{name}.crt",
        "-extfile",
        str(ext),
        cwd=certs,
    ).check_returncode()
    return certs / f"{name}.crt"


@pytest.fixture(scope="module")
def nobodys_dir() -> Iterator[Path]:
    """A folder `nobody` can reach (pytest's own temporary folders are root's, 0700)."""
    if os.geteuid() != 0:
        pytest.skip("running make-certs.sh as nobody needs root")
    with tempfile.TemporaryDirectory(prefix="labhub-front-") as folder:
        os.chmod(folder, 0o711)
        yield Path(folder)


@pytest.fixture(scope="module")
def lab_certs(nobodys_dir: Path) -> Path:
    certs = nobodys_dir / "lab"
    result = make_certs_as_nobody(certs, "lab.example.edu", "10.1.2.3, fd00::5, alias.lab.test")
    assert result.returncode == 0, result.stderr
    return certs


@pytest.mark.unit
def test_make_certs_as_a_user_leaves_no_key_readable_by_others(lab_certs: Path) -> None:
    for key in ("lab.example.edu.key", "labhub-ca.key"):
        info = (lab_certs / key).stat()
        assert stat.S_IMODE(info.st_mode) == 0o600, (key, oct(info.st_mode))
        assert info.st_uid == 65534, key
    for path in lab_certs.iterdir():
        if path.suffix != ".crt":  # certificates are public
            assert not path.stat().st_mode & stat.S_IROTH, path


@pytest.mark.unit
def test_a_key_left_readable_by_an_older_version_is_made_private(nobodys_dir: Path) -> None:
    certs = nobodys_dir / "upgraded"
    assert make_certs_as_nobody(certs, "localhost").returncode == 0
    key = certs / "localhost.key"
    key.chmod(0o644)  # what the old script left when chgrp failed
    result = make_certs_as_nobody(certs, "localhost")
    assert result.returncode == 0 and "is current" in result.stdout, result.stdout
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.unit
@pytest.mark.parametrize(
    "hostname", ["lab.example.edu", "alice.lab.example.edu", "localhost", "alias.lab.test"]
)
def test_the_server_certificate_verifies_under_the_name_constraints(
    lab_certs: Path, hostname: str
) -> None:
    result = openssl(
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        "labhub-ca.crt",
        "-verify_hostname",
        hostname,
        "lab.example.edu.crt",
        cwd=lab_certs,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    handshake(
        lab_certs, lab_certs / "lab.example.edu.crt", lab_certs / "lab.example.edu.key", hostname
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    "san",
    [
        "DNS:www.example.org",
        "DNS:accounts.google.com",
        "DNS:lab.example.edu.evil.org",
        "DNS:example.edu",
        "IP:8.8.8.8",
        "IP:10.1.2.4",
        "IP:2001:db8::1",
    ],
)
def test_the_ca_cannot_vouch_for_another_site(lab_certs: Path, san: str) -> None:
    rogue = sign_with_the_ca(lab_certs, san)
    result = openssl(
        "verify", "-purpose", "sslserver", "-CAfile", "labhub-ca.crt", str(rogue), cwd=lab_certs
    )
    assert result.returncode != 0
    assert "permitted subtree violation" in result.stdout + result.stderr
    # A TLS client trusting the CA (Python's ssl here) refuses it in a real handshake.
    hostname = san.split(":", 1)[1]
    with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
        handshake(lab_certs, rogue, rogue.with_suffix(".key"), hostname)


def handshake(certs: Path, cert: Path, key: Path, hostname: str) -> None:
    """A TLS handshake over a socket pair: a server showing `cert`, a client trusting
    only the lab's CA and expecting `hostname`."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(certs / "labhub-ca.crt"))
    server_end, client_end = socket.socketpair()
    server_end.settimeout(10)
    client_end.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(OSError), server_context.wrap_socket(server_end, server_side=True):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_context.wrap_socket(client_end, server_hostname=hostname):
            pass
    finally:
        client_end.close()
        thread.join(timeout=10)


@pytest.mark.unit
def test_a_new_domain_is_refused_with_the_way_out(lab_certs: Path) -> None:
    before = {p.name: p.read_bytes() for p in lab_certs.glob("lab.example.edu.*")}
    result = make_certs_as_nobody(lab_certs, "other.example.edu")
    assert result.returncode == 1
    assert "cannot vouch for DNS:other.example.edu" in result.stderr, result.stderr
    assert "Re-create the CA" in result.stderr and "labhub-ca.key aside" in result.stderr
    assert not list(lab_certs.glob("other.example.edu.*")), "a certificate was left behind"
    assert not list(lab_certs.glob(".new-*")), "temporary files were left behind"
    assert before == {p.name: p.read_bytes() for p in lab_certs.glob("lab.example.edu.*")}


# --- The proxy with its defaults, in front of the test stack's hub -------------------


@pytest.fixture(scope="module")
def front_defaults(stack: Stack, nobodys_dir: Path) -> Iterator[HubClient]:
    """The stack's proxy service run again by compose with the shipped defaults (no
    LOGIN_RATE_LIMIT, MAX_BODY_SIZE as in .env.example) and a key pair made by `nobody`
    (0600, not readable by nginx's uid), published on DEFAULTS_PORT."""
    certs = nobodys_dir / "localhost"
    made = make_certs_as_nobody(certs, "localhost")
    assert made.returncode == 0, made.stderr
    env_file = nobodys_dir / "defaults.env"
    kept = [
        line
        for line in stack.env_file.read_text().splitlines()
        if not line.startswith(("LOGIN_RATE_LIMIT=", "CERTS_DIR=", "HTTPS_PORT="))
    ]
    env_file.write_text(
        "\n".join([*kept, f"CERTS_DIR={certs}", f"HTTPS_PORT={DEFAULTS_PORT}"]) + "\n"
    )
    name = f"{STACK}-front-defaults"
    defaults = dataclasses.replace(stack, env_file=env_file, certs_dir=certs)
    defaults.compose(
        "run", "-d", "--no-deps", "--name", name, "-p", f"127.0.0.1:{DEFAULTS_PORT}:8443", "proxy"
    )
    client = HubClient(f"https://localhost:{DEFAULTS_PORT}", defaults.ca_file)
    try:
        try:
            wait_until(
                lambda: client.session.get(client.url("/hub/login"), timeout=10).status_code,
                60,
                "the defaults proxy to serve /hub/login",
                done=lambda status: status == 200,
                ignoring=(requests.RequestException,),
            )
        except TimeoutError as error:
            raise AssertionError(docker_logs(name)) from error
        yield client
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def docker_logs(name: str) -> str:
    result = subprocess.run(["docker", "logs", "--tail=50", name], capture_output=True, text=True)
    return result.stdout + result.stderr


@pytest.mark.e2e
def test_tls_is_served_with_a_key_only_nginx_can_read(
    front_defaults: HubClient, nobodys_dir: Path
) -> None:
    host_key = nobodys_dir / "localhost" / "localhost.key"
    assert stat.S_IMODE(host_key.stat().st_mode) == 0o600 and host_key.stat().st_uid == 65534
    context = ssl.create_default_context(cafile=front_defaults.ca_file)
    with (
        socket.create_connection(("127.0.0.1", DEFAULTS_PORT), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    name = f"{STACK}-front-defaults"
    in_container = subprocess.run(
        ["docker", "exec", name, "stat", "-c", "%a %U", "/run/labhub-tls/server.key"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert in_container == ["400", "www-data"]
    # Nothing in the container runs as root once nginx is up, nor keeps a capability.
    top = subprocess.run(
        ["docker", "top", name, "-o", "user,pid,comm"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[1:]
    assert top and all(line.split()[0] == "www-data" for line in top), top
    caps = subprocess.run(
        ["docker", "exec", "-u", "www-data", name, "grep", "-h", "CapEff", "/proc/1/status"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert caps == ["CapEff:", "0000000000000000"], caps


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/hub/login"), ("POST", "/hub/api/users"), ("PUT", "/hub/api/users/admin")],
)
def test_a_large_body_outside_the_contents_api_gets_413(
    front_defaults: HubClient, method: str, path: str
) -> None:
    response = front_defaults.session.request(
        method, front_defaults.url(path), data=b"u=" + b"x" * (2 * 1024 * 1024), timeout=60
    )
    assert response.status_code == 413, (response.status_code, response.text[:200])


@pytest.mark.e2e
def test_a_notebook_of_several_mb_saves_through_the_contents_api(
    stack: Stack, front_defaults: HubClient, username: str
) -> None:
    owner = stack.login(username)
    owner.start_server(username)
    token = owner.new_token(username)
    plot = "A" * (8 * 1024 * 1024)  # an 8 MB base64 image, as an embedded plot would be
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "id": "plot",
                "metadata": {},
                "source": "plot()",
                "execution_count": 1,
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {"image/png": plot},
                    }
                ],
            }
        ],
    }
    url = front_defaults.url(f"/user/{username}/api/contents/big.ipynb")
    headers = {"Authorization": f"token {token}"}
    body = json.dumps({"type": "notebook", "format": "json", "content": notebook})
    assert len(body) > 8 * 1024 * 1024
    saved = front_defaults.session.put(url, data=body, headers=headers, timeout=120)
    assert saved.status_code in (200, 201), (saved.status_code, saved.text[:300])
    read = front_defaults.session.get(url, headers=headers, timeout=120)
    assert read.json()["content"]["cells"][0]["outputs"][0]["data"]["image/png"] == plot
    owner.stop_server(username)


@pytest.mark.e2e
def test_a_burst_of_login_attempts_gets_429_then_a_login_works(
    stack: Stack, front_defaults: HubClient, username: str
) -> None:
    limit = 30  # LOGIN_RATE_LIMIT's default: attempts per minute, as many at once
    password = stack.ensure_account(username)
    attacker = HubClient(front_defaults.base_url, front_defaults.ca_file)
    xsrf = attacker.xsrf()
    statuses, refusals = [], []
    for attempt in range(limit + 30):
        response = attacker.session.post(
            attacker.url("/hub/login"),
            # Other names each time: the hub's own lock-out (5 wrong passwords for one
            # account) must not be what stops the last, right login.
            data={"username": f"{username}-{attempt}", "password": "guess", "_xsrf": xsrf},
            allow_redirects=False,
            timeout=30,
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            refusals.append(response.text)
    assert 429 not in statuses[:limit], statuses
    assert statuses.count(429) >= 10, statuses
    assert all("Too many login attempts" in text for text in refusals), refusals[:1]
    # Only attempts are limited: the login page itself still loads.
    assert attacker.session.get(attacker.url("/hub/login"), timeout=30).status_code == 200
    # One attempt comes back every 60/limit seconds: then the right password works.
    time.sleep(60 / limit + 1)
    response = attacker.session.post(
        attacker.url("/hub/login"),
        data={"username": username, "password": password, "_xsrf": xsrf},
        allow_redirects=False,  # following it would start a server
        timeout=60,
    )
    assert response.status_code == 302, (response.status_code, response.text[:200])
    assert attacker.session.cookies.get("jupyterhub-session-id"), "the login set no session"


# --- Path mode (SUBDOMAINS=false): what a student's page can do -----------------------


@pytest.mark.e2e
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_path_mode_a_students_page_acts_as_the_admin_who_opens_it(
    stack: Stack, username: str
) -> None:
    """The risk docs/security.md states for path mode, shown in a real browser: bob's
    page, served at the hub's origin, mints an API token of the admin who clicks in it.
    tests/test_subdomains.py runs the same page in subdomain mode, where it is stopped."""
    bob = stack.login(username)
    bob.start_server(username)
    assert stack.run(bob, username, serving_code(stack.base_url)).strip() == "serving"
    admin = stack.admin()
    try:
        seen = admin_follows_the_link(
            stack,
            f"{stack.base_url}/user/{username}/proxy/{PROBE_PORT}/",
            stack.certs_dir / "localhost.crt",
        )
        assert seen == {"user": "admin", "status": 201, "token": True}, seen
    finally:
        made = forget_tokens_made_by_the_page(admin)
        bob.stop_server(username)
    assert made, "the hub holds no token made by the page"
