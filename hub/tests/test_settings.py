"""Settings: every variable is checked, and every problem names its variable."""

import difflib
import json
import os
import re
import runpy
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest
from labhub.gpu.profiles import ProfileError, load_profiles
from labhub.settings import (
    SECTIONS,
    NetworkSettings,
    Settings,
    SettingsError,
    boolean,
    parse_memory,
    settings_environment,
)
from labhub.settingsdoc import GENERATED
from traitlets.config import Config

pytestmark = pytest.mark.unit

GOOD = {
    "DOMAIN": "gpu.lab.example.edu",
    "CONFIGPROXY_AUTH_TOKEN": "a" * 64,
    "ADMIN_USERS": "prof",
    "ADMIN_INITIAL_PASSWORD": "b" * 24,
    "SIGNUP_CODE": "c" * 12,
}
WORKSHOP = {
    "AUTH": "shared-password",
    "WORKSHOP_MODE": "true",
    "SHARED_USER_PASSWORD": "student-password",
    "SHARED_ADMIN_PASSWORD": "d" * 48,
}
OAUTH = {"OAUTH_CLIENT_ID": "cid", "OAUTH_CLIENT_SECRET": "csecret", "ADMIN_USERS": ""}


def settings(**overrides: str) -> Settings:
    return Settings.from_env({**GOOD, **overrides})


def problems(**overrides: str) -> str:
    with pytest.raises(SettingsError) as info:
        settings(**overrides)
    return str(info.value)


def test_defaults_are_safe() -> None:
    s = settings()
    assert s.auth == "native"
    assert s.public_url == "https://gpu.lab.example.edu"
    assert s.admin_users == {"prof"}
    assert s.admin_initial_password == "b" * 24 and s.signup_code == "c" * 12
    assert s.mem_limit == 4 * 1024**3
    assert s.workspace_image == "labhub/workspace:0.1.0"
    assert s.gpu_inventory == "none"


def test_public_url_carries_a_non_default_port() -> None:
    assert settings(HTTPS_PORT="8443").public_url == "https://gpu.lab.example.edu:8443"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"AUTH": "kerberos"}, "AUTH='kerberos' is unknown"),
        ({"DOMAIN": "https://x.edu"}, "DOMAIN="),
        ({"HTTPS_PORT": "abc"}, "HTTPS_PORT="),
        ({"HTTPS_PORT": "70000"}, "HTTPS_PORT='70000'"),
        ({"CONFIGPROXY_AUTH_TOKEN": "short"}, "CONFIGPROXY_AUTH_TOKEN"),
        ({**WORKSHOP, "SHARED_USER_PASSWORD": ""}, "SHARED_USER_PASSWORD"),
        ({**WORKSHOP, "SHARED_ADMIN_PASSWORD": "short"}, "SHARED_ADMIN_PASSWORD"),
        ({**WORKSHOP, "ADMIN_USERS": ""}, "ADMIN_USERS is empty"),
        ({**WORKSHOP, "WORKSHOP_MODE": "yes"}, "WORKSHOP_MODE='yes' is not valid"),
        ({"ADMIN_USERS": ""}, "AUTH=native needs exactly one name"),
        ({"ADMIN_USERS": "prof,ann"}, "AUTH=native needs exactly one name"),
        ({"ADMIN_USERS": "Prof"}, "ADMIN_USERS='Prof' is not a usable username"),
        ({"ADMIN_USERS": "a/b"}, "ADMIN_USERS='a/b' is not a usable username"),
        ({"ADMIN_INITIAL_PASSWORD": ""}, "ADMIN_INITIAL_PASSWORD must be 16 to 72 bytes"),
        ({"ADMIN_INITIAL_PASSWORD": "é" * 37}, "ADMIN_INITIAL_PASSWORD must be 16 to 72 bytes"),
        ({"SIGNUP_CODE": "1234"}, "SIGNUP_CODE is shorter than 12"),
        ({"SIGNUP_CODE": "b" * 24}, "SIGNUP_CODE and ADMIN_INITIAL_PASSWORD are equal"),
        ({"ALLOWED_USERS": "ann"}, "ALLOWED_USERS is not used with AUTH=native"),
        ({"USER_MEM_LIMIT": "lots"}, "USER_MEM_LIMIT="),
        ({"USER_MEM_LIMIT": "100M"}, "USER_MEM_LIMIT='100M' is below 256M"),
        ({"USER_CPU_LIMIT": "-1"}, "USER_CPU_LIMIT="),
        ({"USER_PIDS_LIMIT": "0"}, "USER_PIDS_LIMIT="),
        ({"USER_TMP_SIZE": "1M"}, "USER_TMP_SIZE='1M' is below 16M"),
        ({"NAMED_SERVERS": "-1"}, "NAMED_SERVERS="),
        ({"NAMED_SERVERS": "11"}, "NAMED_SERVERS="),
        ({"IDLE_TIMEOUT": "1h"}, "IDLE_TIMEOUT="),
        ({"WORKSPACE_IMAGE": "labhub/workspace:latest"}, "WORKSPACE_IMAGE"),
        ({"WORKSPACE_IMAGE": "labhub/workspace"}, "WORKSPACE_IMAGE"),
        ({"DOCKER_NETWORK": "bad name"}, "DOCKER_NETWORK"),
        ({"GPU_INVENTORY": "gpus.json"}, "GPU_INVENTORY"),
        ({"AUTH": "github"}, "OAUTH_CLIENT_ID is required with AUTH=github"),
        ({**OAUTH, "AUTH": "github"}, "AUTH=github needs an allow-list"),
        ({**OAUTH, "AUTH": "google"}, "AUTH=google needs an allow-list"),
        ({"AUTH": "generic", "OAUTH_CLIENT_ID": "x", "OAUTH_CLIENT_SECRET": "y"}, "OIDC_ISSUER"),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(v),
)
def test_a_wrong_setting_names_its_variable(overrides: dict[str, str], variable: str) -> None:
    assert variable in problems(**overrides)


def test_subdomains_need_a_dotted_domain() -> None:
    assert settings(SUBDOMAINS="true").subdomains is True
    assert "SUBDOMAINS=true needs a DOMAIN with a dot" in problems(
        SUBDOMAINS="true", DOMAIN="localhost"
    )
    assert "SUBDOMAINS='yes'" in problems(SUBDOMAINS="yes")


def test_monitoring_needs_the_metrics_token_and_never_prints_it() -> None:
    assert "MONITORING=true needs PROMETHEUS_API_TOKEN" in problems(MONITORING="true")
    token = "e" * 64
    assert settings(MONITORING="true", PROMETHEUS_API_TOKEN=token).prometheus_api_token == token
    assert settings().prometheus_api_token is None
    short = problems(PROMETHEUS_API_TOKEN="tooshort")
    assert "PROMETHEUS_API_TOKEN is missing or shorter than 32" in short
    assert "tooshort" not in short


def test_shared_password_is_workshop_mode_and_refuses_to_start_without_the_opt_in() -> None:
    without = {key: value for key, value in WORKSHOP.items() if key != "WORKSHOP_MODE"}
    message = problems(**without)
    assert "AUTH=shared-password is workshop mode" in message
    assert "can log in under any name, an existing student's too" in message
    assert "set WORKSHOP_MODE=true" in message and "AUTH=native" in message
    assert "workshop mode" in problems(**{**WORKSHOP, "WORKSHOP_MODE": "false"})
    assert settings(**WORKSHOP).auth == "shared-password"


GENERIC = {**OAUTH, "AUTH": "generic", "OIDC_ISSUER": "https://idp.example.edu/realms/lab"}


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({**OAUTH, "AUTH": "github", "GITHUB_ALLOWED_ORGS": "lab", "ADMIN_USERS": "admin"}, True),
        ({**OAUTH, "AUTH": "github", "GITHUB_ALLOWED_ORGS": "lab", "ADMIN_USERS": "ann-p"}, False),
        ({**OAUTH, "AUTH": "github", "ALLOWED_USERS": "ann-p,bob"}, False),
        (
            {**OAUTH, "AUTH": "google", "GOOGLE_HOSTED_DOMAINS": "uni.edu", "ADMIN_USERS": "ann"},
            True,
        ),
        (
            {
                **OAUTH,
                "AUTH": "google",
                "GOOGLE_HOSTED_DOMAINS": "uni.edu",
                "ADMIN_USERS": "a@uni.edu",
            },
            False,
        ),
        ({**OAUTH, "AUTH": "google", "ALLOWED_USERS": "a@gmail.com"}, False),
        ({**OAUTH, "AUTH": "cilogon", "CILOGON_IDP": "https://idp", "ADMIN_USERS": "prof"}, True),
        (
            {**OAUTH, "AUTH": "cilogon", "CILOGON_IDP": "https://idp", "ADMIN_USERS": "p@u.edu"},
            False,
        ),
        ({**GENERIC, "ADMIN_USERS": "admin"}, True),
        ({**GENERIC, "ADMIN_USERS": "Administrator"}, True),
        ({**GENERIC, "ADMIN_USERS": "prof"}, False),
        ({**GENERIC, "OIDC_USERNAME_CLAIM": "email", "ADMIN_USERS": "prof"}, True),
        ({**GENERIC, "OIDC_USERNAME_CLAIM": "email", "ADMIN_USERS": "prof@uni.edu"}, False),
        ({**GENERIC, "ADMIN_GROUPS": "staff"}, False),
    ],
    ids=[
        "github-role-name",
        "github-login",
        "github-allowed-users",
        "google-bare-name",
        "google-email",
        "google-users-only",
        "cilogon-bare-name",
        "cilogon-email",
        "generic-admin",
        "generic-administrator",
        "generic-username",
        "generic-email-claim-bare-name",
        "generic-email-claim-email",
        "generic-admin-groups",
    ],
)
def test_oauth_admins_are_full_identities(env: dict[str, str], refused: bool) -> None:
    if refused:
        assert f"ADMIN_USERS={env['ADMIN_USERS']!r}" in problems(**env)
    else:
        assert settings(**env).admin_users == frozenset(filter(None, [env["ADMIN_USERS"]]))


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        settings(AUTH="nope", USER_MEM_LIMIT="x", HTTPS_PORT="y")
    assert len(info.value.problems) == 3
    assert "see .env.example" in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"), [("512M", 512 * 1024**2), ("4G", 4 * 1024**3), ("1.5g", 1610612736)]
)
def test_memory_sizes(text: str, size: int) -> None:
    assert parse_memory(text) == size


def test_oauth_settings_are_collected() -> None:
    s = settings(
        AUTH="generic",
        OAUTH_CLIENT_ID="hub",
        OAUTH_CLIENT_SECRET="secret",
        OIDC_ISSUER="https://idp.example.edu/realms/lab/",
        ALLOWED_GROUPS="students staff",
    )
    assert s.oauth is not None
    assert s.oauth.oidc_issuer == "https://idp.example.edu/realms/lab"
    assert s.oauth.callback_url == "https://gpu.lab.example.edu/hub/oauth_callback"
    assert s.allowed_groups == {"students", "staff"}


def test_gpu_defaults_keep_the_record_on_the_hub_data_volume() -> None:
    s = settings()
    assert s.gpu_db == f"{s.data_dir}/gpu.sqlite" == "/srv/jupyterhub/gpu.sqlite"
    assert s.gpu_profiles == ""
    assert s.gpu_queue is False
    assert s.gpu_queue_timeout == 600
    assert s.gpu_quota_user_hours is None
    assert s.gpu_quota_group_hours == {}


def test_gpu_settings_are_read() -> None:
    s = settings(
        GPU_PROFILES="/srv/labhub/profiles.json",
        GPU_DB="/srv/jupyterhub/gpus.sqlite",
        GPU_QUEUE="True",
        GPU_QUEUE_TIMEOUT="120",
        GPU_QUOTA_USER_HOURS="12.5",
        GPU_QUOTA_GROUP_HOURS='{"students": 100, "thesis": 40}',
    )
    assert s.gpu_profiles == "/srv/labhub/profiles.json"
    assert s.gpu_db == "/srv/jupyterhub/gpus.sqlite"
    assert s.gpu_queue is True
    assert s.gpu_queue_timeout == 120
    assert s.gpu_quota_user_hours == 12.5
    assert s.gpu_quota_group_hours == {"students": 100.0, "thesis": 40.0}


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"GPU_PROFILES": "profiles.json"}, "GPU_PROFILES='profiles.json'"),
        ({"GPU_DB": "gpu.sqlite"}, "GPU_DB='gpu.sqlite'"),
        ({"GPU_QUEUE": "yes"}, "GPU_QUEUE='yes'"),
        ({"GPU_QUEUE_TIMEOUT": "10m"}, "GPU_QUEUE_TIMEOUT='10m'"),
        ({"GPU_QUEUE_TIMEOUT": "0"}, "GPU_QUEUE_TIMEOUT='0'"),
        ({"GPU_QUOTA_USER_HOURS": "lots"}, "GPU_QUOTA_USER_HOURS='lots'"),
        ({"GPU_QUOTA_USER_HOURS": "-1"}, "GPU_QUOTA_USER_HOURS='-1'"),
        ({"GPU_QUOTA_GROUP_HOURS": "students=100"}, "GPU_QUOTA_GROUP_HOURS="),
        ({"GPU_QUOTA_GROUP_HOURS": '{"students": "x"}'}, "GPU_QUOTA_GROUP_HOURS="),
        ({"GPU_QUOTA_GROUP_HOURS": "[100]"}, "GPU_QUOTA_GROUP_HOURS="),
        ({"GPU_IDLE_TIMEOUT": "soon"}, "GPU_IDLE_TIMEOUT="),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(v),
)
def test_a_wrong_gpu_setting_names_its_variable(overrides: dict[str, str], variable: str) -> None:
    assert variable in problems(**overrides)


# --- The table: each setting described once ----------------------------------------------

REPO = Path(__file__).resolve().parents[2]
TABLE = [s for section in SECTIONS for s in section.settings]
HUB_TABLE = [s for section in SECTIONS if section.reader == "hub" for s in section.settings]


def env_example_values() -> dict[str, str]:
    text = (REPO / ".env.example").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line))


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_generated_files_match_the_table(path: str) -> None:
    committed = (REPO / path).read_text().splitlines()
    wanted = GENERATED[path]().splitlines()
    diff = "\n".join(difflib.unified_diff(committed, wanted, path, "table", lineterm="", n=0))
    assert not diff, f"{path} differs from hub/labhub/settings.py; run make settings-docs:\n{diff}"


COMPOSE_FILES = ("docker-compose.yml", "swarm.yml")


def test_env_example_lists_every_setting_but_what_compose_sets() -> None:
    in_example = set(env_example_values())
    compose_set = {
        s.name for section in SECTIONS if not section.in_env_file for s in section.settings
    }
    assert in_example == {s.name for s in TABLE} - compose_set
    # ... and those compose does set, for the hub, whatever .env says (with ENGINE=swarm
    # the names of the containers, in compose/swarm.yml).
    compose = "".join((REPO / f"compose/{name}").read_text() for name in COMPOSE_FILES)
    for name in compose_set:
        assert re.search(rf"^\s+{name}: \S", compose, re.MULTILINE), name


def test_from_env_reads_nothing_outside_the_table() -> None:
    class Recording(dict[str, str]):
        read: ClassVar[set[str]] = set()

        def get(self, key: str, default: Any = None) -> Any:
            self.read.add(key)
            return super().get(key, default)

    Settings.from_env(Recording(GOOD))
    assert Recording.read == {s.name for s in HUB_TABLE}


def test_env_example_as_make_env_copies_it_is_the_defaults() -> None:
    """`make env` copies .env.example (empty lines included): that is the same hub as no
    .env at all, and the network layout netguard needs."""
    copied = {**env_example_values(), **GOOD}
    assert Settings.from_env(copied) == Settings.from_env(GOOD)
    NetworkSettings.from_env(copied)


def test_every_switch_takes_true_or_false_and_nothing_else() -> None:
    switches = [s.name for s in HUB_TABLE if s.parse is boolean]
    assert {"HUB_DEBUG", "SUBDOMAINS", "GPU_QUEUE", "WORKSHOP_MODE"} <= set(switches)
    with pytest.raises(SettingsError) as info:
        settings(**dict.fromkeys(switches, "yes"))
    assert info.value.problems == [f"{n}='yes' is not valid: use true or false" for n in switches]
    assert settings(HUB_DEBUG="TRUE", GPU_QUEUE="False").debug is True


def test_a_secret_is_never_shown_in_an_error() -> None:
    message = problems(CONFIGPROXY_AUTH_TOKEN="hunter2-token")
    assert "CONFIGPROXY_AUTH_TOKEN is missing or shorter than 32" in message
    assert "hunter2" not in message


def test_gpu_cull_every_is_a_setting() -> None:
    assert settings().gpu_cull_every == 60
    assert settings(GPU_CULL_EVERY="15").gpu_cull_every == 15
    assert "GPU_CULL_EVERY='0' is not valid" in problems(GPU_CULL_EVERY="0")


def test_gpu_reclaiming_rules_have_defaults_and_a_warning_shorter_than_the_rule() -> None:
    s = settings()
    assert (s.gpu_utilisation_idle_timeout, s.gpu_utilisation_warn) == (1800, 300)
    assert (s.gpu_session_max, s.gpu_session_extension, s.gpu_session_extensions) == (
        28800, 7200, 2,
    )  # fmt: skip
    assert settings(GPU_UTILISATION_IDLE_TIMEOUT="0", GPU_SESSION_MAX="0").gpu_session_max == 0
    message = problems(GPU_UTILISATION_IDLE_TIMEOUT="600", GPU_UTILISATION_WARN="600")
    assert "GPU_UTILISATION_WARN=600 is not shorter than GPU_UTILISATION_IDLE_TIMEOUT=600" in (
        message
    )
    assert "GPU_SESSION_EXTENSIONS='-1' is not valid" in problems(GPU_SESSION_EXTENSIONS="-1")


def test_the_gpu_service_builds_the_same_settings_from_its_environment() -> None:
    hub_env = {**GOOD, "GPU_INVENTORY": "auto", "PATH": "/usr/bin", "USERS_SUBNET": "10.0.0.0/8"}
    service_env = settings_environment(hub_env)
    assert set(service_env) == {s.name for s in HUB_TABLE}  # no PATH, no network layout
    assert (service_env["GPU_INVENTORY"], service_env["GPU_IDLE_TIMEOUT"]) == ("auto", "1800")
    assert Settings.from_env(service_env) == Settings.from_env(hub_env)


@pytest.mark.parametrize(
    ("text", "size"), [("512b", 512), ("64k", 65536), ("1.5G", 1610612736), ("2m", 2 * 1024**2)]
)
def test_one_grammar_for_sizes_in_env_and_profiles(tmp_path: Path, text: str, size: int) -> None:
    assert parse_memory(text) == size
    path = tmp_path / "profiles.json"
    path.write_text(
        json.dumps({"profiles": [{"slug": "p", "display_name": "P", "mem_limit": text}]})
    )
    assert load_profiles(path)[0].mem_limit == size


@pytest.mark.parametrize("text", ["16 GB", "4T", "-1G", "G"])
def test_a_size_outside_the_grammar_is_refused_in_env_and_profiles(
    tmp_path: Path, text: str
) -> None:
    assert f"USER_SHM_SIZE={text!r} is not valid: a size" in problems(USER_SHM_SIZE=text)
    path = tmp_path / "profiles.json"
    path.write_text(
        json.dumps({"profiles": [{"slug": "p", "display_name": "P", "mem_limit": text}]})
    )
    with pytest.raises(ProfileError, match=f"{path}: profile 'p': mem_limit="):
        load_profiles(path)


def test_every_reader_of_env_takes_its_last_line(tmp_path: Path) -> None:
    """make, the scripts and docker compose read the same value when .env repeats a line."""
    env = tmp_path / ".env"
    env.write_text("DOMAIN=first.example.edu\nDOMAIN=last.example.edu\n")
    probe = tmp_path / "probe.mk"
    probe.write_text(f"include {REPO}/Makefile\nprobe:\n\t@echo $(call env_value,DOMAIN)\n")
    make = ["make", "-s", "-C", str(REPO), "-f", str(probe), "probe", f"ENV_FILE={env}"]
    seen = {"make": subprocess.run(make, capture_output=True, text=True, check=True).stdout}
    for script, function in (
        ("init-env.sh", "value_of"),
        ("print-welcome.sh", "value_of"),
        ("doctor.sh", "env_value"),
    ):
        reader = next(
            line
            for line in (REPO / "scripts" / script).read_text().splitlines()
            if line.startswith(f"{function}()")
        )
        shell = f"env_file={env}\n{reader}\n{function} DOMAIN"
        seen[script] = subprocess.run(
            ["bash", "-c", shell], capture_output=True, text=True, check=True
        ).stdout
    assert {name: value.strip() for name, value in seen.items()} == dict.fromkeys(
        seen, "last.example.edu"
    )


def run_hub_config(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], data_dir: Path) -> Config:
    """hub/jupyterhub_config.py, run as JupyterHub runs it, in an environment of `env` alone
    (the hub's data volume, where it keeps a service token, is `data_dir`)."""
    for name in {s.name for s in TABLE}:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"HUB_DATA_DIR": str(data_dir), **env}.items():
        monkeypatch.setenv(name, value)
    c = Config()
    runpy.run_path(str(REPO / "hub/jupyterhub_config.py"), {"c": c, "get_config": lambda: c})
    return c


def test_jupyterhub_config_hands_the_gpu_service_the_hubs_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The GPU service's environment builds the very Settings the hub built."""
    gpu = {"GPU_INVENTORY": "auto", "GPU_IDLE_TIMEOUT": "900"}
    c = run_hub_config(monkeypatch, {**GOOD, **gpu}, tmp_path)
    service = next(s for s in c.JupyterHub.services if s["name"] == "gpus")
    hub = Settings.from_env(os.environ)
    assert Settings.from_env(service["environment"]) == hub
    assert hub.gpu_idle_timeout == 900


@pytest.mark.parametrize(("named", "allowed"), [("1", True), ("3", True), ("0", False)])
def test_named_servers_follow_their_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, named: str, allowed: bool
) -> None:
    c = run_hub_config(monkeypatch, {**GOOD, "NAMED_SERVERS": named}, tmp_path)
    assert c.JupyterHub.allow_named_servers is allowed
    assert c.JupyterHub.named_server_limit_per_user == int(named)


def test_a_broken_ca_file_stops_the_hub_with_its_name_whatever_the_login(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Checked at start-up in every AUTH mode (it was read only when an OAuth login
    needed it), with the variable and the file named."""
    bad = tmp_path / "campus.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(SystemExit) as exit_:
        run_hub_config(monkeypatch, {**GOOD, "EXTRA_CA_FILE": str(bad)}, tmp_path)
    assert exit_.value.code == 2
    assert f"EXTRA_CA_FILE: {bad} holds no PEM certificate" in capsys.readouterr().err
