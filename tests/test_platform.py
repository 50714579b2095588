"""End to end through nginx on https: log in, spawn, compute, persist, isolate.

Everything is real: the stack comes from `make up`, user servers are Docker
containers on the local engine, requests go through nginx with TLS.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import requests
from stacks import REPO, USERS_CREATED, Stack, run_make

pytestmark = pytest.mark.e2e

TRAIN_ONE_STEP = """
import os, numpy as np, keras
import tensorflow as tf
(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
print("mnist", x_train.shape, y_train.shape, x_test.shape, x_train.dtype)
from mnist_workspace.models import build
model = build("lenet")
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
loss = model.train_on_batch(x_train[:64, ..., None] / 255.0, y_train[:64])
print("tf", tf.__version__, "params", model.count_params(), "trained", np.isfinite(loss).all())
import sys, jupyter_events.logger
print("slow IRI grammar loaded", "rfc3987_syntax" in sys.modules)
"""


def plain_session(stack: Stack) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = stack.ca_file
    return session


def test_http_only_redirects_to_https(stack: Stack) -> None:
    response = plain_session(stack).get(stack.http_url + "/hub/login", allow_redirects=False)
    assert response.status_code == 301
    assert response.headers["Location"] == f"{stack.base_url}/hub/login"


def test_https_sends_hsts_and_secure_cookies(stack: Stack) -> None:
    response = plain_session(stack).get(stack.base_url + "/hub/login")
    assert response.status_code == 200
    hsts = response.headers["Strict-Transport-Security"]
    assert "max-age=63072000" in hsts
    xsrf_cookie = next(c for c in response.cookies if c.name == "_xsrf")
    assert xsrf_cookie.secure


def test_wrong_password_is_refused(stack: Stack) -> None:
    response = stack.client().login("mallory", "not-the-password")
    assert response.status_code == 403
    assert "Invalid username or password" in response.text


def test_student_trains_lenet_offline_in_a_kernel(stack: Stack, username: str) -> None:
    client = stack.login(username)
    client.start_server(username)
    output = stack.run(client, username, TRAIN_ONE_STEP)
    assert "mnist (60000, 28, 28) (60000,) (10000, 28, 28) uint8" in output
    assert "params 1199882 trained True" in output
    # The image leaves out the IRI grammar that cost every server start ~1 CPU second.
    assert "slow IRI grammar loaded False" in output
    # The MNIST notebook was copied into the student's home and opens by default.
    auth = {"Authorization": f"token {client.new_token(username)}"}
    contents = client.session.get(
        stack.base_url + f"/user/{username}/api/contents/mnist/MNIST.ipynb?content=0",
        headers=auth,
    )
    assert contents.status_code == 200, contents.text
    # One kernel, under the report's name (no second, identical "Python 3" kernel).
    specs = client.session.get(stack.base_url + f"/user/{username}/api/kernelspecs", headers=auth)
    assert specs.status_code == 200, specs.text
    kernels = {
        name: spec["spec"]["display_name"] for name, spec in specs.json()["kernelspecs"].items()
    }
    assert kernels == {"tensorflow-gpu": "TensorFlow-GPU"}
    client.stop_server(username)


def test_tensorboard_answers_under_the_users_prefix(stack: Stack, username: str) -> None:
    client = stack.login(username)
    client.start_server(username)
    token = client.new_token(username)
    response = client.session.get(
        stack.base_url + f"/user/{username}/tensorboard/",
        headers={"Authorization": f"token {token}"},
        timeout=180,
    )
    assert response.status_code == 200, response.text[:300]
    assert "TensorBoard" in response.text
    client.stop_server(username)


def test_files_survive_stop_and_start(stack: Stack, username: str) -> None:
    client = stack.login(username)
    client.start_server(username)
    stack.run(
        client,
        username,
        "open('/home/jovyan/thesis.txt', 'w').write('chapter 1')",
    )
    client.stop_server(username)
    client.start_server(username)
    output = stack.run(
        client,
        username,
        "print(open('/home/jovyan/thesis.txt').read())",
    )
    assert output.strip() == "chapter 1"
    client.stop_server(username)


def test_users_cannot_read_each_others_files(stack: Stack, username: str) -> None:
    alice = username
    bob = username + "-b"
    USERS_CREATED.append(bob)
    alice_client, bob_client = stack.login(alice), stack.login(bob)
    alice_client.start_server(alice)
    bob_client.start_server(bob)
    bob_token = bob_client.new_token(bob)
    stack.run(alice_client, alice, "open('/home/jovyan/secret.txt', 'w').write('alice only')")
    # Bob's token does not open Alice's server...
    denied = bob_client.session.get(
        stack.base_url + f"/user/{alice}/api/contents/secret.txt",
        headers={"Authorization": f"token {bob_token}"},
        allow_redirects=False,
    )
    assert denied.status_code in (302, 403), denied.status_code
    # ...and Bob's container has no path to Alice's volume.
    output = stack.run(
        bob_client, bob, "import os; print(os.path.exists('/home/jovyan/secret.txt'))"
    )
    assert output.strip() == "False"
    alice_client.stop_server(alice)
    bob_client.stop_server(bob)


def test_a_wrong_setting_stops_the_hub_with_its_name(stack: Stack) -> None:
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "-e",
            "AUTH=kerberos",
            "-e",
            "CONFIGPROXY_AUTH_TOKEN=" + "x" * 40,
            "-e",
            "SHARED_USER_PASSWORD=long-enough",
            "labhub/hub:test",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "AUTH='kerberos' is unknown" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_up_with_a_wrong_setting_prints_it_and_changes_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    hub_before = hub_container_id(stack)
    wrong = tmp_path / ".env"
    lines = stack.env_file.read_text().splitlines()
    kept = [line for line in lines if not line.startswith("USER_MEM_LIMIT=")]
    wrong.write_text("\n".join([*kept, "USER_MEM_LIMIT=lots"]) + "\n")
    wrong.chmod(0o600)
    result = run_make("up", env_file=wrong)
    assert result.returncode != 0
    assert "USER_MEM_LIMIT='lots' is not valid: a size such as 2G or 512M" in result.stderr
    assert "fix the settings above" in result.stderr
    assert hub_container_id(stack) == hub_before, "the running hub was touched"


def test_make_up_refuses_to_take_over_a_stack_it_did_not_create(
    stack: Stack, tmp_path: Path
) -> None:
    hub_before = hub_container_id(stack)
    # Another .env with the same STACK_NAME (other secrets), from this checkout...
    other_env = tmp_path / ".env"
    other_env.write_text(
        "".join(
            f"CONFIGPROXY_AUTH_TOKEN={'0' * 64}\n"
            if line.startswith("CONFIGPROXY_AUTH_TOKEN=")
            else line + "\n"
            for line in stack.env_file.read_text().splitlines()
        )
    )
    other_env.chmod(0o600)
    # ... and the same .env from another checkout of labhub.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for part in ("Makefile", ".env.example", "scripts", "compose"):
        subprocess.run(["cp", "-r", str(REPO / part), str(checkout)], check=True)
    for cwd, env_file, said in (
        (REPO, other_env, "was started with other secrets"),
        (checkout, stack.env_file, "already runs from another checkout"),
    ):
        result = run_make("up", env_file=env_file, cwd=cwd)
        assert result.returncode != 0 and said in result.stderr, result.stdout + result.stderr
    assert hub_container_id(stack) == hub_before, "the running hub was touched"


def hub_container_id(stack: Stack) -> str:
    return stack.compose("ps", "-q", "hub").stdout.strip()


def test_make_up_serves_the_certificate_make_certs_issued_again(stack: Stack) -> None:
    """`make certs` (part of `make up`) issues the server certificate again when it is
    missing, its names changed or it nears its end; nginx copies the pair only when its
    container starts, so `make up` recreates the proxy when the certificate changed (its
    hash is the label) and nginx serves the new one, which the same CA verifies."""
    certificate = stack.certs_dir / f"{stack.value('DOMAIN')}.crt"
    port = int(stack.value("HTTPS_PORT"))

    def served() -> bytes:
        context = ssl.create_default_context(cafile=stack.ca_file)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    def on_file() -> bytes:
        [leaf, *_chain] = re.findall(
            r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?",
            certificate.read_text(), re.S,
        )  # fmt: skip
        return ssl.PEM_cert_to_DER_cert(leaf)

    before = on_file()
    assert served() == before
    certificate.unlink()
    (certificate.parent / f"{stack.value('DOMAIN')}.key").unlink()
    stack.make("up", "BUILD=no")
    assert on_file() != before
    assert served() == on_file()


def test_files_survive_make_down_and_up(stack: Stack, username: str) -> None:
    client = stack.login(username)
    client.start_server(username)
    stack.run(client, username, "open('/home/jovyan/keep.txt', 'w').write('kept')")
    client.stop_server(username)
    stack.make("down")
    stack.make("up")
    client = stack.login(username)
    client.start_server(username)
    output = stack.run(client, username, "print(open('/home/jovyan/keep.txt').read())")
    assert output.strip() == "kept"
    client.stop_server(username)
