"""TLS at the front door (nginx), end to end against the test stack.

sslyze scans the published port and checks it against Mozilla's "intermediate"
profile, trusting only the stack's own test CA; the test reads the scan's JSON for
the details the issue names (versions, ciphers, chain, names). HSTS, the HTTP
redirect and Secure cookies are checked by the test itself, since sslyze 6 leaves
its HSTS check disabled.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from stacks import HTTPS_PORT, Stack
from test_security import forget

pytestmark = pytest.mark.e2e

# Mozilla intermediate (v5.7): the only suites nginx may accept.
TLS12_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
TWO_YEARS = 63072000


@pytest.fixture(scope="module")
def sslyze_scan(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One sslyze run with --mozilla_config=intermediate; its exit code and JSON."""
    out = tmp_path_factory.mktemp("sslyze") / "scan.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sslyze",
            "--mozilla_config=intermediate",
            f"--certinfo_ca_file={stack.ca_file}",
            f"--json_out={out}",
            f"localhost:{HTTPS_PORT}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    scan = json.loads(out.read_text())["server_scan_results"][0]
    return {"returncode": result.returncode, "stdout": result.stdout, "scan": scan}


def test_sslyze_mozilla_intermediate_compliant(sslyze_scan: dict[str, Any]) -> None:
    assert sslyze_scan["scan"]["scan_status"] == "COMPLETED"
    assert "OK - Compliant" in sslyze_scan["stdout"], sslyze_scan["stdout"][-3000:]
    assert sslyze_scan["returncode"] == 0


def test_only_tls12_and_tls13_with_forward_secret_aead_suites(sslyze_scan: dict[str, Any]) -> None:
    result = sslyze_scan["scan"]["scan_result"]

    def accepted(version: str) -> set[str]:
        suites = result[f"{version}_cipher_suites"]["result"]["accepted_cipher_suites"]
        return {s["cipher_suite"]["name"] for s in suites}

    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        assert not result[f"{old}_cipher_suites"]["result"]["is_tls_version_supported"], old
        assert accepted(old) == set(), old
    assert accepted("tls_1_2") and accepted("tls_1_2") <= TLS12_SUITES, accepted("tls_1_2")
    assert accepted("tls_1_3") and accepted("tls_1_3") <= TLS13_SUITES, accepted("tls_1_3")


def test_chain_verifies_against_the_test_ca_with_the_right_names(
    sslyze_scan: dict[str, Any], stack: Stack
) -> None:
    info = sslyze_scan["scan"]["scan_result"]["certificate_info"]["result"]
    deployment = info["certificate_deployments"][0]
    ours = [
        r
        for r in deployment["path_validation_results"]
        if r["trust_store"]["path"] == stack.ca_file
    ]
    assert ours and ours[0]["was_validation_successful"], ours
    assert deployment["received_chain_has_valid_order"]
    assert not deployment["verified_chain_has_sha1_signature"]
    names = deployment["received_certificate_chain"][0]["subject_alternative_name"]
    assert "localhost" in names["dns_names"] and "127.0.0.1" in names["ip_addresses"]


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_python_client_verifies_the_names(stack: Stack, name: str) -> None:
    context = ssl.create_default_context(cafile=stack.ca_file)
    with (
        socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_a_wrong_name_or_an_unknown_ca_fails_verification(stack: Stack) -> None:
    context = ssl.create_default_context(cafile=stack.ca_file)
    with (
        socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"),
    ):
        context.wrap_socket(raw, server_hostname="evil.example.org")
    # The system's trust store does not know the test CA.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(stack.base_url, verify=True, timeout=10)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)
def test_tls10_and_tls11_handshakes_are_refused(stack: Stack, version: ssl.TLSVersion) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(stack.ca_file)
    context.minimum_version = version
    context.maximum_version = version
    # Let the local OpenSSL offer the old protocol at all, so the refusal is nginx's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", HTTPS_PORT), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")


def _session(stack: Stack) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = stack.ca_file
    return session


@pytest.mark.parametrize("path", ["/", "/hub/login", "/hub/api/", "/no/such/page", "/user/x/"])
def test_every_https_answer_carries_hsts(stack: Stack, path: str) -> None:
    response = _session(stack).get(stack.base_url + path, allow_redirects=False, timeout=30)
    hsts = response.headers.get("Strict-Transport-Security", "")
    directives = {d.strip().split("=")[0]: d.strip() for d in hsts.split(";") if d.strip()}
    assert "max-age" in directives, (response.status_code, hsts)
    assert int(directives["max-age"].split("=")[1]) >= TWO_YEARS
    assert "includeSubDomains" in directives


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "HEAD"])
@pytest.mark.parametrize("path", ["/", "/hub/login", "/hub/api/users", "/user/alice/lab"])
def test_plain_http_only_redirects(stack: Stack, method: str, path: str) -> None:
    response = _session(stack).request(
        method, stack.http_url + path, data=b"x" * 10, allow_redirects=False, timeout=30
    )
    assert response.status_code == 301, (method, path, response.status_code)
    assert response.headers["Location"] == stack.base_url + path
    assert "jupyter" not in response.text.lower()
    assert not response.cookies


def test_every_cookie_is_secure_after_login(stack: Stack) -> None:
    client = stack.login("cookie-check")
    cookies = list(client.session.cookies)
    assert {c.name for c in cookies} >= {"_xsrf", "jupyterhub-session-id"}, cookies
    for cookie in cookies:
        assert cookie.secure, f"cookie {cookie.name} is not Secure"
    # The login cookies are HttpOnly too: page scripts cannot read them.
    response = client.session.get(stack.base_url + "/hub/home", timeout=30)
    assert response.status_code == 200
    for cookie in client.session.cookies:
        if cookie.name.startswith("jupyterhub-"):
            assert cookie.has_nonstandard_attr("HttpOnly"), cookie.name
    forget({"cookie-check": client})


@pytest.mark.skipif(shutil.which("testssl") is None, reason="testssl.sh is not installed")
def test_testssl_agrees(stack: Stack, tmp_path: Path) -> None:
    """A second opinion (Debian's testssl.sh): no finding rated HIGH or CRITICAL."""
    out = tmp_path / "testssl.json"
    subprocess.run(
        [
            "testssl",
            "--quiet",
            "--warnings=off",
            "--color=0",
            "--protocols",
            "--std",
            "--server-defaults",
            "--headers",
            "--vulnerable",
            f"--add-ca={stack.ca_file}",
            f"--jsonfile={out}",
            f"localhost:{HTTPS_PORT}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    findings = json.loads(out.read_text())
    assert findings, "testssl wrote no findings"
    # The test CA is a local one with no CRL or OCSP responder; testssl rates that
    # HIGH for any certificate. An institution's certificate carries an OCSP URI.
    expected = {"cert_revocation"}
    bad = [
        f for f in findings if f.get("severity") in ("HIGH", "CRITICAL") and f["id"] not in expected
    ]
    assert not bad, bad
    by_id = {f["id"]: f for f in findings}
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert "not offered" in by_id[old]["finding"], by_id[old]
