"""The compose files render for every front: labhub's nginx, or nginx-proxy (+ Let's Encrypt).

The nginx-proxy images need a registry, so this checks the composition, not a run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from stacks import REPO, env_text

pytestmark = pytest.mark.integration


def rendered(tmp_path: Path, *files: str, profiles: str = "") -> dict[str, dict[str, object]]:
    env_file = tmp_path / ".env"
    # .env.example's values (as `make env` copies them), with a token and a real domain.
    values = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    values.update(CONFIGPROXY_AUTH_TOKEN="x" * 64, DOMAIN="hub.example.edu")
    env_file.write_text(env_text(values))
    args = [arg for name in files for arg in ("-f", f"compose/{name}")]
    result = subprocess.run(
        ["docker", "compose", *args, "--env-file", str(env_file), "config", "--format", "json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LABHUB_ENV_FILE": str(env_file), "COMPOSE_PROFILES": profiles},
    )
    services: dict[str, dict[str, object]] = json.loads(result.stdout)["services"]
    return services


def test_default_front_is_labhubs_nginx(tmp_path: Path) -> None:
    services = rendered(tmp_path, "docker-compose.yml")
    assert set(services) == {"proxy", "proxy-chp", "hub", "docker-proxy", "netguard", "diskquota"}


def socket_holders(services: dict[str, dict[str, object]]) -> set[str]:
    """Services that mount the Docker socket (in any mode: :ro is no protection)."""
    return {
        name
        for name, service in services.items()
        for volume in service.get("volumes") or []  # type: ignore[attr-defined]
        if "docker.sock" in str(volume.get("source", ""))
    }


def test_nginx_proxy_front_replaces_it(tmp_path: Path) -> None:
    services = rendered(tmp_path, "docker-compose.yml", "nginx-proxy.yml")
    assert set(services) == {
        "nginx-proxy",
        "proxy-chp",
        "hub",
        "docker-proxy",
        "docker-proxy-front",
        "netguard",
        "diskquota",
    }
    # Only the two filtering proxies hold the socket; the front reads the filtered one.
    assert socket_holders(services) == {"docker-proxy", "docker-proxy-front"}
    front = services["docker-proxy-front"]["environment"]
    assert isinstance(front, dict) and front["PROXY_POLICY"] == "frontend"
    nginx_env = services["nginx-proxy"]["environment"]
    assert isinstance(nginx_env, dict)
    assert nginx_env["DOCKER_HOST"] == "tcp://docker-proxy-front:2375"
    chp_env = services["proxy-chp"]["environment"]
    assert isinstance(chp_env, dict)
    assert chp_env["VIRTUAL_HOST"] == "hub.example.edu"
    assert chp_env["VIRTUAL_PORT"] == "8000"


def test_lets_encrypt_comes_with_its_profile(tmp_path: Path) -> None:
    services = rendered(tmp_path, "docker-compose.yml", "nginx-proxy.yml", profiles="letsencrypt")
    assert "acme-companion" in services
    assert socket_holders(services) == {"docker-proxy", "docker-proxy-front"}
    acme_env = services["acme-companion"]["environment"]
    assert isinstance(acme_env, dict)
    assert acme_env["DOCKER_HOST"] == "tcp://docker-proxy-front:2375"
    # The front's policy lets exactly this container be reloaded.
    front = services["docker-proxy-front"]["environment"]
    assert isinstance(front, dict)
    assert front["NGINX_PROXY_CONTAINER"] == acme_env["NGINX_PROXY_CONTAINER"]


def test_hub_waits_for_a_healthy_netguard(tmp_path: Path) -> None:
    """Fail closed: no user container is spawned before the users' network is guarded."""
    services = rendered(tmp_path, "docker-compose.yml")
    depends = services["hub"]["depends_on"]
    assert isinstance(depends, dict)
    assert depends["netguard"]["condition"] == "service_healthy"
    guard = services["netguard"]
    assert guard["network_mode"] == "host"
    assert guard["cap_drop"] == ["ALL"] and guard["cap_add"] == ["NET_ADMIN"]
    assert guard["read_only"] is True
    # No secret reaches it: only the network settings.
    environment = guard["environment"]
    assert isinstance(environment, dict)
    assert not any("TOKEN" in key or "PASSWORD" in key for key in environment)


def test_containers_carry_the_hash_of_the_files_they_read_at_start_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nginx copies the certificate, the hub and the Docker proxy read GPU_CONFIG_DIR, only
    when they start: `make up` gives compose the files' hashes (STARTUP_FILES_SHAS) as
    their labels, so a change recreates them (tests/test_gpus.py, tests/test_platform.py)."""
    monkeypatch.setenv("CONFIG_FILES_SHA", "c" * 64)
    monkeypatch.setenv("CERTIFICATE_SHA", "d" * 64)
    services = rendered(tmp_path, "docker-compose.yml")
    labels = {name: s["labels"] for name, s in services.items() if "labels" in s}
    config = {"org.labhub.config-files-sha256": "c" * 64}
    assert labels == {
        "hub": config,
        "docker-proxy": config,
        "proxy": {"org.labhub.certificate-sha256": "d" * 64},
    }


def test_prometheus_comes_with_its_profile_on_a_network_of_its_own(tmp_path: Path) -> None:
    """MONITORING=true: no socket, no user network, its port on loopback only."""
    assert "prometheus" not in rendered(tmp_path, "docker-compose.yml")
    services = rendered(tmp_path, "docker-compose.yml", profiles="monitoring")
    prometheus = services["prometheus"]
    assert set(prometheus["networks"]) == {"metrics"}  # type: ignore[arg-type]
    assert "metrics" in services["hub"]["networks"]  # type: ignore[operator]
    assert socket_holders(services) == {"docker-proxy", "metrics-docker-proxy"}
    assert [p["host_ip"] for p in prometheus["ports"]] == ["127.0.0.1"]  # type: ignore[attr-defined]
    assert prometheus["cap_drop"] == ["ALL"]


def test_the_container_metrics_read_the_engine_through_a_read_only_proxy(tmp_path: Path) -> None:
    """The exporter holds no socket; its proxy reads for it (PROXY_POLICY=metrics), and
    only the exporter reaches that proxy."""
    services = rendered(tmp_path, "docker-compose.yml", profiles="monitoring")
    exporter, proxy = services["container-metrics"], services["metrics-docker-proxy"]
    assert proxy["environment"]["PROXY_POLICY"] == "metrics"  # type: ignore[index]
    assert exporter["environment"]["DOCKER_HOST"] == "tcp://metrics-docker-proxy:2375"  # type: ignore[index]
    assert set(exporter["networks"]) == {"metrics", "metrics-docker-api"}  # type: ignore[arg-type]
    on_proxy_network = {
        name
        for name, service in services.items()
        if "metrics-docker-api" in (service.get("networks") or {})  # type: ignore[operator]
    }
    assert on_proxy_network == {"container-metrics", "metrics-docker-proxy"}
    assert exporter["cap_drop"] == ["ALL"] and exporter["read_only"] is True
    # The homes' usage socket, not the hub's (which makes and deletes homes).
    assert [v["source"] for v in exporter["volumes"]] == ["diskquota-usage"]  # type: ignore[attr-defined]


def test_the_diskquota_service_holds_quota_root_and_nothing_else(tmp_path: Path) -> None:
    """CAP_SYS_ADMIN (for a qgroup limit) stays out of the hub: no network, no socket."""
    services = rendered(tmp_path, "docker-compose.yml")
    quota = services["diskquota"]
    assert quota["network_mode"] == "none" and quota["cap_add"] == ["SYS_ADMIN", "CHOWN"]
    assert {v["target"] for v in quota["volumes"]} == {  # type: ignore[attr-defined]
        "/srv/quota-off",
        "/run/labhub-diskquota",
        "/run/labhub-diskquota-usage",
    }
    assert "SYS_ADMIN" not in str(services["hub"].get("cap_add"))
    # The hub reads the homes' usage (api/me, the admin page's Homes table), read-only.
    [usage] = [
        v
        for v in services["hub"]["volumes"]  # type: ignore[attr-defined]
        if v["target"] == "/run/labhub-diskquota-usage"
    ]
    assert usage["source"] == "diskquota-usage" and usage["read_only"] is True
