"""Each AUTH choice yields the right authenticator class and traits."""

from pathlib import Path
from typing import Any

import pytest
from labhub.auth import (
    NOT_ALLOWED_MESSAGE,
    OidcEndpoints,
    authenticator_config,
    discover_endpoints,
    provider_ca_bundle,
)
from labhub.settings import Settings, SettingsError, check_files

pytestmark = pytest.mark.unit

BASE = {"DOMAIN": "hub.example.edu", "CONFIGPROXY_AUTH_TOKEN": "t" * 64, "ADMIN_USERS": "prof"}
WORKSHOP = {**BASE, "AUTH": "shared-password", "WORKSHOP_MODE": "true"}
OAUTH = {**BASE, "OAUTH_CLIENT_ID": "cid", "OAUTH_CLIENT_SECRET": "csecret", "ADMIN_USERS": ""}
IDP = "https://idp.uni.edu/idp/shibboleth"
DISCOVERY = {
    "authorization_endpoint": "https://idp.example.edu/auth",
    "token_endpoint": "https://idp.example.edu/token",
    "userinfo_endpoint": "https://idp.example.edu/userinfo",
}


def fake_discover(issuer: str, ca_bundle: str) -> dict[str, Any]:
    assert issuer == "https://idp.example.edu/realms/lab"
    return DISCOVERY


def config(env: dict[str, str], ca_bundle: str = "") -> tuple[str, dict[str, Any]]:
    """What jupyterhub_config does, with discovery answered by DISCOVERY."""
    settings = Settings.from_env(env)
    oidc = None
    if settings.auth == "generic":
        assert settings.oauth is not None
        oidc = discover_endpoints(settings.oauth, ca_bundle, fetch=fake_discover)
    return authenticator_config(settings, ca_bundle, oidc)


def test_native_is_the_default_with_the_first_admin_and_the_signup_code() -> None:
    cls, traits = config({**BASE, "ADMIN_INITIAL_PASSWORD": "i" * 20, "SIGNUP_CODE": "s" * 12})
    assert cls == "labhub.native.LabNativeAuthenticator"
    assert traits == {
        "admin_users": {"prof"},
        "admin_initial_password": "i" * 20,
        "signup_code": "s" * 12,
        "allow_all": True,
    }


def test_shared_password_lets_anyone_with_the_password_in() -> None:
    cls, traits = config(
        {**WORKSHOP, "SHARED_USER_PASSWORD": "p" * 12, "SHARED_ADMIN_PASSWORD": "a" * 40}
    )
    assert cls.endswith("SharedPasswordAuthenticator")
    assert traits["allow_all"] is True
    assert traits["user_password"] == "p" * 12
    assert traits["admin_password"] == "a" * 40
    assert traits["admin_users"] == {"prof"}


def test_shared_password_with_an_allow_list_is_closed() -> None:
    _, traits = config({**WORKSHOP, "SHARED_USER_PASSWORD": "p" * 12, "ALLOWED_USERS": "ann,bob"})
    assert traits["allow_all"] is False
    assert traits["allowed_users"] == {"ann", "bob"}


@pytest.mark.parametrize(
    ("env", "cls_suffix", "expected"),
    [
        (
            {"AUTH": "github", "ALLOWED_USERS": "ann-p"},
            "GitHubOAuthenticator",
            {"allowed_users": {"ann-p"}, "allow_all": False, "scope": []},
        ),
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
        (
            {"AUTH": "cilogon", "CILOGON_IDP": IDP},
            "CILogonOAuthenticator",
            {
                "allow_all": True,
                "idps": {IDP: {"username_derivation": {"username_claim": "email"}}},
            },
        ),
        (
            {
                "AUTH": "cilogon",
                "CILOGON_IDP": IDP,
                "ALLOWED_GROUPS": "lab",
                "OIDC_GROUPS_CLAIM": "isMemberOf",
            },
            "CILogonOAuthenticator",
            {
                "manage_groups": True,
                "allowed_groups": {"lab"},
                "auth_state_groups_key": "cilogon_user.isMemberOf",
                "allow_all": False,
            },
        ),
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
    ids=[
        "github-users",
        "github-org",
        "google-domain",
        "cilogon",
        "cilogon-groups",
        "generic-oidc-groups",
    ],
)
def test_oauth_providers(env: dict[str, str], cls_suffix: str, expected: dict[str, Any]) -> None:
    cls, traits = config({**OAUTH, **env})
    assert cls.endswith(cls_suffix)
    assert traits["enable_pkce"] is True
    assert traits["validate_server_cert"] is True
    assert traits["oauth_callback_url"] == "https://hub.example.edu/hub/oauth_callback"
    assert traits["custom_403_message"] == NOT_ALLOWED_MESSAGE
    for key, value in expected.items():
        assert traits[key] == value, key


@pytest.mark.parametrize(
    "env",
    [
        {"AUTH": "github", "GITHUB_ALLOWED_ORGS": "lab", "ADMIN_USERS": "ann-p"},
        {"AUTH": "google", "GOOGLE_HOSTED_DOMAINS": "uni.edu", "ADMIN_USERS": "ann@uni.edu"},
        {"AUTH": "cilogon", "CILOGON_IDP": IDP, "ADMIN_USERS": "ann@uni.edu"},
        {
            "AUTH": "generic",
            "OIDC_ISSUER": "https://idp.example.edu/realms/lab",
            "ADMIN_USERS": "ann",
        },
    ],
    ids=["github", "google", "cilogon", "generic"],
)
def test_oauth_admins_are_not_admin_users_that_skip_the_allow_rules(env: dict[str, str]) -> None:
    _, traits = config({**OAUTH, **env})
    assert "admin_users" not in traits
    assert traits["admins_by_name"] == {env["ADMIN_USERS"]}


def test_campus_ca_reaches_oauthenticators_http_client() -> None:
    env = {**OAUTH, "AUTH": "cilogon", "CILOGON_IDP": IDP, "EXTRA_CA_BUNDLE": "/etc/ssl/ca.pem"}
    bundle = provider_ca_bundle(Settings.from_env(env))
    assert bundle == "/etc/ssl/ca.pem"
    _, traits = config(env, bundle)
    assert traits["http_request_kwargs"] == {"ca_certs": "/etc/ssl/ca.pem"}


@pytest.mark.parametrize(
    ("auth", "hint"),
    [("github", "GITHUB_ALLOWED_ORGS"), ("google", "GOOGLE_HOSTED_DOMAINS")],
    ids=["github", "google"],
)
def test_providers_without_a_groups_claim_reject_groups_with_a_hint(auth: str, hint: str) -> None:
    # Refused by Settings.from_env, with the other problems, before any wiring.
    with pytest.raises(SettingsError, match=hint) as info:
        Settings.from_env({**OAUTH, "AUTH": auth, "ALLOWED_GROUPS": "x", "ADMIN_USERS": "admin"})
    assert len(info.value.problems) == 3  # groups, allow-list, admin named by a role


def test_incomplete_discovery_document_is_a_settings_error() -> None:
    settings = Settings.from_env(
        {**OAUTH, "AUTH": "generic", "OIDC_ISSUER": "https://idp.example.edu/realms/lab"}
    )
    assert settings.oauth is not None
    with pytest.raises(SettingsError, match="userinfo_endpoint"):
        discover_endpoints(settings.oauth, "", fetch=lambda issuer, ca: {"token_endpoint": "x"})


GENERIC = {**OAUTH, "AUTH": "generic", "OIDC_ISSUER": "https://idp.example.edu/realms/lab"}
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_discovery_document_of_another_issuer_is_refused() -> None:
    settings = Settings.from_env(GENERIC)
    assert settings.oauth is not None
    document = {**DISCOVERY, "issuer": "https://other.example.edu/realms/lab"}
    with pytest.raises(SettingsError, match="differs from the issuer"):
        discover_endpoints(settings.oauth, "", fetch=lambda issuer, ca: document)


def test_discovery_reports_every_problem_of_the_document_at_once() -> None:
    settings = Settings.from_env(GENERIC)
    assert settings.oauth is not None
    document = {"issuer": "https://other.example.edu", "token_endpoint": "x"}
    with pytest.raises(SettingsError) as info:
        discover_endpoints(settings.oauth, "", fetch=lambda issuer, ca: document)
    assert len(info.value.problems) == 2


def test_the_authenticator_mapping_does_no_discovery_and_writes_no_file(tmp_path: Path) -> None:
    settings = Settings.from_env({**GENERIC, "HUB_DATA_DIR": str(tmp_path)})
    endpoints = OidcEndpoints("https://i/auth", "https://i/token", "https://i/userinfo")
    _, traits = authenticator_config(settings, "", endpoints)
    assert (traits["authorize_url"], traits["userdata_url"]) == (
        "https://i/auth",
        "https://i/userinfo",
    )
    assert list(tmp_path.iterdir()) == []


def test_runtime_ca_file_is_added_to_the_image_bundle(tmp_path: Path) -> None:
    system, extra = tmp_path / "system.pem", tmp_path / "campus.pem"
    system.write_text(CERT.replace("MIIB", "SYSTEM"))
    extra.write_text(CERT.replace("MIIB", "CAMPUS"))
    seen: list[str] = []

    def discover(issuer: str, ca: str) -> dict[str, Any]:
        seen.append(ca)
        return DISCOVERY

    env = {
        **GENERIC,
        "EXTRA_CA_BUNDLE": str(system),
        "EXTRA_CA_FILE": str(extra),
        "HUB_DATA_DIR": str(tmp_path),
    }
    settings = Settings.from_env(env)
    check_files(settings)
    bundle = provider_ca_bundle(settings)
    assert settings.oauth is not None
    oidc = discover_endpoints(settings.oauth, bundle, fetch=discover)
    _, traits = authenticator_config(settings, bundle, oidc)
    assert traits["http_request_kwargs"]["ca_certs"] == bundle
    assert seen == [bundle], "discovery and OAuth calls trust the same bundle"
    text = Path(bundle).read_text()
    assert "SYSTEM" in text and "CAMPUS" in text
    assert bundle.startswith(str(tmp_path))


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "image-bundle"), ("not a certificate", "no PEM certificate"), (None, "cannot read")],
    ids=["empty-means-none", "not-pem", "missing"],
)
def test_runtime_ca_file_problems(tmp_path: Path, content: str | None, expected: str) -> None:
    extra = tmp_path / "campus.pem"
    if content is not None:
        extra.write_text(content)
    settings = Settings.from_env(
        {
            **GENERIC,
            "EXTRA_CA_BUNDLE": "image-bundle",
            "EXTRA_CA_FILE": str(extra),
            "HUB_DATA_DIR": str(tmp_path),
        }
    )
    if expected == "image-bundle":
        check_files(settings)
        assert provider_ca_bundle(settings) == "image-bundle"
    else:
        with pytest.raises(SettingsError, match=f"EXTRA_CA_FILE: .*{expected}"):
            check_files(settings)


def test_empty_callback_url_from_env_example_means_the_default() -> None:
    # `make env` copies .env.example, which lists OAUTH_CALLBACK_URL= empty.
    _, traits = config(
        {**GENERIC, "OAUTH_CALLBACK_URL": "", "HTTPS_PORT": "8443"},
    )
    assert traits["oauth_callback_url"] == "https://hub.example.edu:8443/hub/oauth_callback"


def test_azure_style_claims_from_the_id_token() -> None:
    _, traits = config({**GENERIC, "OIDC_CLAIMS_FROM": "id_token", "ALLOWED_GROUPS": "g-1"})
    assert traits["userdata_from_id_token"] is True
    assert "userdata_url" not in traits  # OAuthenticator refuses both
    assert traits["auth_state_groups_key"] == "oauth_user.groups"
    assert traits["token_url"] == DISCOVERY["token_endpoint"]


def test_unknown_claims_source_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="OIDC_CLAIMS_FROM='jwt' is unknown"):
        Settings.from_env({**GENERIC, "OIDC_CLAIMS_FROM": "jwt"})


def test_cilogon_needs_the_universitys_idp() -> None:
    with pytest.raises(SettingsError, match="CILOGON_IDP is required"):
        Settings.from_env({**OAUTH, "AUTH": "cilogon"})


@pytest.mark.parametrize(
    "env",
    [
        {"AUTH": "github", "GITHUB_ALLOWED_ORGS": "lab-org"},
        {"AUTH": "google", "GOOGLE_HOSTED_DOMAINS": "uni.edu"},
        {"AUTH": "cilogon", "CILOGON_IDP": IDP, "ALLOWED_GROUPS": "lab"},
        {**GENERIC, "ALLOWED_GROUPS": "students", "ADMIN_GROUPS": "staff"},
        {**GENERIC, "OIDC_CLAIMS_FROM": "id_token", "ALLOWED_GROUPS": "g-1"},
    ],
    ids=["github", "google", "cilogon", "generic-userinfo", "generic-id-token"],
)
def test_the_real_authenticator_accepts_every_trait(env: dict[str, str]) -> None:
    """OAuthenticator itself loads the configuration: every trait exists and validates."""
    from importlib import import_module

    from traitlets.config import Config

    path, traits = config({**OAUTH, **env})
    module, name = path.rsplit(".", 1)
    cls = getattr(import_module(module), name)
    unknown = set(traits) - set(cls.class_trait_names())
    assert not unknown, f"not traits of {name}: {unknown}"
    authenticator = cls(config=Config({name: traits}))
    for key, value in traits.items():
        actual = getattr(authenticator, key)
        if isinstance(value, dict):  # validators fill in defaults (CILogon's idps)
            assert actual.keys() == value.keys(), key
        else:
            assert actual == value, key


@pytest.mark.parametrize(
    ("env", "default"),
    [
        ({"AUTH": "github", "GITHUB_ALLOWED_ORGS": "lab"}, None),  # OAuthenticator's "GitHub"
        (GENERIC, "idp.example.edu"),
    ],
    ids=["github", "generic"],
)
def test_login_service_names_the_oauth_button(env: dict[str, str], default: str | None) -> None:
    _, traits = config({**OAUTH, **env})
    assert traits.get("login_service") == default
    _, traits = config({**OAUTH, **env, "LOGIN_SERVICE": "University SSO"})
    assert traits["login_service"] == "University SSO"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**BASE, "LOGIN_SERVICE": "University SSO"}, "AUTH=native shows a username and"),
        ({**GENERIC, "LOGIN_SERVICE": "x" * 61}, "is longer than 60 characters"),
    ],
    ids=["native-has-a-form", "too-long"],
)
def test_a_wrong_login_service_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
