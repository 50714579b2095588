"""Settings: every variable is checked, and every problem names its variable."""

import pytest
from labhub.settings import Settings, SettingsError, parse_memory

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
        ({"HTTPS_PORT": "70000"}, "HTTPS_PORT=70000"),
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
        ({"USER_MEM_LIMIT": "100M"}, "USER_MEM_LIMIT is below 256M"),
        ({"USER_CPU_LIMIT": "-1"}, "USER_CPU_LIMIT="),
        ({"USER_PIDS_LIMIT": "0"}, "USER_PIDS_LIMIT="),
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
    s = settings(HUB_DATA_DIR="/data")
    assert s.gpu_db == "/data/gpu.sqlite"
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
