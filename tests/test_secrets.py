"""Secrets: generated strong, stored 0600, never logged, never in an image.

The generator is tested on its own (unit); the rest reads the running test stack
(its .env, the hub's volume, its logs) and every labhub image (history, config and
the bytes of every layer).
"""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import docker
import pytest
from stacks import REPO, STACK, VERSION, Stack
from test_security import forget

# What `make env` generates, by login mode, and the form of each value.
GENERATED = {
    "native": {
        "CONFIGPROXY_AUTH_TOKEN": r"[0-9a-f]{64}",  # 256 bits
        "PROMETHEUS_API_TOKEN": r"[0-9a-f]{64}",
        "ADMIN_INITIAL_PASSWORD": r"[A-Za-z0-9]{20}",  # ~119 bits
        "SIGNUP_CODE": r"[0-9a-f]{4}(-[0-9a-f]{4}){3}",  # 64 bits
    },
    "shared-password": {
        "CONFIGPROXY_AUTH_TOKEN": r"[0-9a-f]{64}",
        "PROMETHEUS_API_TOKEN": r"[0-9a-f]{64}",
        "SHARED_ADMIN_PASSWORD": r"[0-9a-f]{48}",  # 192 bits
        "SHARED_USER_PASSWORD": r"[A-Za-z0-9]{16}",  # ~95 bits
    },
}
SECRET_NAMES = tuple(GENERATED["native"])
SUSPICIOUS_ENV = re.compile(r"PASSW|SECRET|TOKEN|PRIVATE|API_?KEY|CREDENTIAL|AUTH", re.I)


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs if not k.startswith("#")}


@pytest.mark.unit
@pytest.mark.parametrize("auth", list(GENERATED))
def test_init_env_generates_strong_distinct_secrets_in_a_0600_file(
    tmp_path: Path, auth: str
) -> None:
    generated = GENERATED[auth]
    values = []
    for run in range(2):
        env_file = tmp_path / f"run{run}.env"
        env_file.write_text(f"AUTH={auth}\n")
        result = subprocess.run(
            ["scripts/init-env.sh", str(env_file)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        env = read_env(env_file)
        for name, form in generated.items():
            assert re.fullmatch(form, env[name]), name
        # The tokens are never printed; the passwords are shown once, on creation.
        tokens = {"CONFIGPROXY_AUTH_TOKEN", "PROMETHEUS_API_TOKEN"}
        for name in tokens:
            assert env[name] not in result.stdout + result.stderr
        for name in set(generated) - tokens:
            assert env[name] in result.stdout, name
        values.append(tuple(env[name] for name in generated))
        # A second run keeps every value and prints none.
        again = subprocess.run(
            ["scripts/init-env.sh", str(env_file)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert tuple(read_env(env_file)[name] for name in generated) == values[-1]
        assert again.stdout == ""
    assert len(set(values[0]) | set(values[1])) == 2 * len(generated)


@pytest.mark.unit
def test_an_emptied_signup_code_stays_empty(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    subprocess.run(["scripts/init-env.sh", str(env_file)], cwd=REPO, check=True, timeout=60)
    emptied = re.sub(r"(?m)^SIGNUP_CODE=.*$", "SIGNUP_CODE=", env_file.read_text())
    env_file.write_text(emptied)
    subprocess.run(["scripts/init-env.sh", str(env_file)], cwd=REPO, check=True, timeout=60)
    assert read_env(env_file)["SIGNUP_CODE"] == ""


def stack_secrets(stack: Stack) -> dict[str, str]:
    """Every secret of the running test stack, by name."""
    secrets = {name: stack.value(name) for name in SECRET_NAMES}
    secrets["log-check's password"] = stack.password_of("log-check")
    hub = docker.from_env().containers.get(f"{STACK}-hub-1")
    cookie = hub.exec_run(["cat", "/srv/jupyterhub/jupyterhub_cookie_secret"])
    assert cookie.exit_code == 0, cookie.output
    secrets["cookie_secret"] = cookie.output.decode().strip()
    for key in ("labhub-ca.key", "localhost.key"):
        body = "".join((stack.certs_dir / key).read_text().splitlines()[1:-1])
        secrets[key] = body[:60]  # a distinctive slice of the base64 body
    assert all(len(value) >= 16 for value in secrets.values()), secrets.keys()
    return secrets


@pytest.mark.e2e
def test_env_file_and_hub_secrets_are_0600(stack: Stack) -> None:
    assert stat.S_IMODE(stack.env_file.stat().st_mode) == 0o600
    hub = docker.from_env().containers.get(f"{STACK}-hub-1")
    # The database holds token hashes and user state: private to the hub, like the secret.
    for name in ("jupyterhub_cookie_secret", "jupyterhub.sqlite"):
        listing = hub.exec_run(["stat", "-c", "%a %U %n", f"/srv/jupyterhub/{name}"])
        assert listing.output.decode().startswith("600 jupyterhub "), listing.output
    # The CA key never leaves certs/ and is private to its owner.
    assert stat.S_IMODE((stack.certs_dir / "labhub-ca.key").stat().st_mode) == 0o600


@pytest.mark.e2e
def test_secrets_are_never_logged(stack: Stack) -> None:
    # Make the secrets flow first: admin and user logins, an API token.
    admin = stack.login("admin")
    admin.new_token("admin")
    user = stack.login("log-check")
    stack.client().login("log-check", "wrong-" + stack.password_of("log-check")[:4])
    forget({"log-check": user})
    logs = stack.compose("logs", "--no-color", "--timestamps").stdout
    assert "labhub is up" in logs or len(logs) > 1000, "no logs to search"
    for name, value in stack_secrets(stack).items():
        assert value not in logs, f"{name} appears in the stack's logs"


def labhub_images() -> list[str]:
    api = docker.from_env()
    tags = [t for image in api.images.list(name="labhub/*") for t in image.tags]
    chosen = [t for t in tags if t.endswith(f":{VERSION}")]
    assert {t.split(":")[0] for t in chosen} >= {"labhub/hub", "labhub/proxy", "labhub/workspace"}
    return sorted(chosen)


@pytest.mark.e2e
def test_images_carry_no_secret_in_history_or_config(stack: Stack) -> None:
    secrets = stack_secrets(stack)
    api = docker.from_env()
    for tag in labhub_images():
        history = subprocess.run(
            ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", tag],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        config = api.images.get(tag).attrs["Config"]
        text = history + repr(config)
        for name, value in secrets.items():
            assert value not in text, f"{name} in {tag}"
        names = [entry.split("=", 1)[0] for entry in config.get("Env") or []]
        assert not [n for n in names if SUSPICIOUS_ENV.search(n)], (tag, names)
        assert "PRIVATE KEY" not in text, tag


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_image_layers_hold_no_secret_bytes(stack: Stack) -> None:
    """Stream `docker save` of every labhub image and search every byte of it."""
    needles = {name: value.encode() for name, value in stack_secrets(stack).items()}
    # The operator's own secrets, if this checkout has them, were in the build context.
    own_env = REPO / ".env"
    if own_env.exists():
        for name in SECRET_NAMES:
            value = read_env(own_env).get(name, "")
            if len(value) >= 16:
                needles[f"repo .env {name}"] = value.encode()
    for key in (REPO / "certs").glob("*.key"):
        needles[f"repo {key.name}"] = "".join(key.read_text().splitlines()[1:-1])[:60].encode()
    overlap = max(len(n) for n in needles.values())
    for tag in labhub_images():
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        assert save.stdout is not None
        tail, total = b"", 0
        try:
            while chunk := save.stdout.read(8 << 20):
                window = tail + chunk
                for name, needle in needles.items():
                    assert needle not in window, f"{name} found in a layer of {tag}"
                tail = window[-overlap:]
                total += len(chunk)
        finally:
            save.stdout.close()
            assert save.wait(timeout=600) == 0
        assert total > 10 << 20, f"docker save {tag} gave only {total} bytes"


@pytest.mark.unit
def test_no_secret_file_in_the_build_context() -> None:
    """.dockerignore sends only what the Dockerfiles copy; .env and keys stay home."""
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert "*" in ignore, "the build context is not deny-by-default"
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert allowed and not [a for a in allowed if a.startswith(("certs", ".env"))], allowed
