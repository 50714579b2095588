"""Each AUTH choice yields the right authenticator class and traits."""

from typing import Any

import pytest
from labhub.auth import authenticator_config
from labhub.settings import Settings, SettingsError

pytestmark = pytest.mark.unit

BASE = {"DOMAIN": "hub.example.edu", "CONFIGPROXY_AUTH_TOKEN": "t" * 64, "ADMIN_USERS": "prof"}
OAUTH = {**BASE, "OAUTH_CLIENT_ID": "cid", "OAUTH_CLIENT_SECRET": "csecret"}
DISCOVERY = {
    "authorization_endpoint": "https://idp.example.edu/auth",
    "token_endpoint": "https://idp.example.edu/token",
    "userinfo_endpoint": "https://idp.example.edu/userinfo",
}


def fake_discover(issuer: str, ca_bundle: str) -> dict[str, Any]:
    assert issuer == "https://idp.example.edu/realms/lab"
    return DISCOVERY


def config(env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    return authenticator_config(Settings.from_env(env), discover=fake_discover)


def test_shared_password_lets_anyone_with_the_password_in() -> None:
    cls, traits = config(
        {**BASE, "SHARED_USER_PASSWORD": "p" * 12, "SHARED_ADMIN_PASSWORD": "a" * 40}
    )
    assert cls.endswith("SharedPasswordAuthenticator")
    assert traits["allow_all"] is True
    assert traits["user_password"] == "p" * 12
    assert traits["admin_password"] == "a" * 40
    assert traits["admin_users"] == {"prof"}


def test_shared_password_with_an_allow_list_is_closed() -> None:
    _, traits = config({**BASE, "SHARED_USER_PASSWORD": "p" * 12, "ALLOWED_USERS": "ann,bob"})
    assert traits["allow_all"] is False
    assert traits["allowed_users"] == {"ann", "bob"}


@pytest.mark.parametrize(
    ("env", "cls_suffix", "expected"),
    [
        ({"AUTH": "github"}, "GitHubOAuthenticator", {"allow_all": True}),
        (
            {"AUTH": "github", "GITHUB_ALLOWED_ORGS": "lab-org"},
            "GitHubOAuthenticator",
            {"allowed_organizations": {"lab-org"}, "allow_all": False, "scope": ["read:org"]},
        ),
        (
            {"AUTH": "google", "GOOGLE_HOSTED_DOMAINS": "uni.edu"},
            "GoogleOAuthenticator",
            {"hosted_domain": ["uni.edu"], "allow_all": False},
        ),
        ({"AUTH": "cilogon"}, "CILogonOAuthenticator", {"allow_all": True}),
        (
            {
                "AUTH": "generic",
                "OIDC_ISSUER": "https://idp.example.edu/realms/lab",
                "ALLOWED_GROUPS": "students",
                "ADMIN_GROUPS": "staff",
            },
            "GenericOAuthenticator",
            {
                "authorize_url": DISCOVERY["authorization_endpoint"],
                "token_url": DISCOVERY["token_endpoint"],
                "userdata_url": DISCOVERY["userinfo_endpoint"],
                "manage_groups": True,
                "allowed_groups": {"students"},
                "admin_groups": {"staff"},
                "auth_state_groups_key": "oauth_user.groups",
                "allow_all": False,
            },
        ),
    ],
    ids=["github-open", "github-org", "google-domain", "cilogon", "generic-oidc-groups"],
)
def test_oauth_providers(env: dict[str, str], cls_suffix: str, expected: dict[str, Any]) -> None:
    cls, traits = config({**OAUTH, **env})
    assert cls.endswith(cls_suffix)
    assert traits["enable_pkce"] is True
    assert traits["validate_server_cert"] is True
    assert traits["oauth_callback_url"] == "https://hub.example.edu/hub/oauth_callback"
    for key, value in expected.items():
        assert traits[key] == value, key


def test_campus_ca_reaches_oauthenticators_http_client() -> None:
    _, traits = config({**OAUTH, "AUTH": "cilogon", "EXTRA_CA_BUNDLE": "/etc/ssl/certs/ca.pem"})
    assert traits["http_request_kwargs"] == {"ca_certs": "/etc/ssl/certs/ca.pem"}


def test_github_rejects_groups_with_a_hint() -> None:
    with pytest.raises(SettingsError, match="GITHUB_ALLOWED_ORGS"):
        config({**OAUTH, "AUTH": "github", "ALLOWED_GROUPS": "x"})


def test_incomplete_discovery_document_is_a_settings_error() -> None:
    settings = Settings.from_env(
        {**OAUTH, "AUTH": "generic", "OIDC_ISSUER": "https://idp.example.edu/realms/lab"}
    )
    with pytest.raises(SettingsError, match="userinfo_endpoint"):
        authenticator_config(settings, discover=lambda issuer, ca: {"token_endpoint": "x"})
