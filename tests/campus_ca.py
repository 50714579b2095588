"""A university's own CA, made for a test, and server certificates from it.

Login providers and directories on campus carry certificates from such a CA; the hub
trusts it through EXTRA_CA_FILE (the stack's local CA is name-constrained to the hub's
names and could not vouch for them). Test modules import from here."""

from __future__ import annotations

import subprocess
from pathlib import Path

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str) -> None:
    result = subprocess.run(
        ["openssl", *args], text=True, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"


def make_campus_ca(out: Path, name: str = "labhub test campus CA") -> None:
    """campus-ca.crt/.key in `out`, valid two days."""
    _openssl(
        *["req", "-x509", *EC_KEY, "-days", "2", "-subj", f"/CN={name}"],
        *["-keyout", str(out / "campus-ca.key"), "-out", str(out / "campus-ca.crt")],
        *["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"],
        *["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    )


def issue_certificate(ca_dir: Path, out: Path, subject_alt_name: str, common_name: str) -> None:
    """tls.crt/.key in `out` for `subject_alt_name` (IP:10.0.0.5, DNS:ldap.uni.test) from
    the campus CA in `ca_dir`; world-readable, since the servers run as another user (a
    throwaway test key)."""
    ext = out / "ext.cnf"
    ext.write_text(
        f"subjectAltName={subject_alt_name}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n"
    )
    key, csr, crt = (str(out / name) for name in ("tls.key", "tls.csr", "tls.crt"))
    _openssl("req", *EC_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={common_name}")
    _openssl(
        *["x509", "-req", "-in", csr, "-CA", str(ca_dir / "campus-ca.crt")],
        *["-CAkey", str(ca_dir / "campus-ca.key"), "-CAcreateserial", "-days", "2"],
        *["-sha256", "-extfile", str(ext), "-out", crt],
    )
    for name in ("tls.key", "tls.crt"):
        (out / name).chmod(0o644)
