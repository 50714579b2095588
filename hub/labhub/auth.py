"""Choose and configure the authenticator from validated settings.

`authenticator_config` is a pure mapping from `Settings` (already checked by
`Settings.from_env` and `check_files`) to traitlets. The two start-up steps with
effects come before it, in `jupyterhub_config.py`: `provider_ca_bundle` writes the CA
bundle for the provider's TLS when EXTRA_CA_FILE holds certificates, and, for
AUTH=generic, `discover_endpoints` reads the provider's discovery document.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import OAuthSettings, Settings, SettingsError

AUTHENTICATOR_CLASSES = {
    # NativeAuthenticator: one account and password per person (labhub/native.py).
    "native": "labhub.native.LabNativeAuthenticator",
    # Workshop mode. JupyterHub's own, minus a 500 on non-ASCII passwords (sharedpassword.py).
    "shared-password": "labhub.sharedpassword.SharedPasswordAuthenticator",
    # OAuthenticator's, with a clear page when the provider refuses a code (providers.py).
    "github": "labhub.providers.GitHubOAuthenticator",
    "google": "labhub.providers.GoogleOAuthenticator",
    "generic": "labhub.providers.GenericOAuthenticator",
    "cilogon": "labhub.providers.CILogonOAuthenticator",
    # ldapauthenticator's, with directory groups, admin groups and a clear 403 (ldap.py).
    "ldap": "labhub.ldap.LabLDAPAuthenticator",
}

# Shown (with 403) to someone the provider signed in but this hub does not allow.
NOT_ALLOWED_MESSAGE = (
    "You signed in, but your account is not allowed to use this hub: it is not in a "
    "group, organisation or domain this hub admits. If you should have access, ask the "
    "hub's administrators to add you."
)


def provider_ca_bundle(settings: Settings) -> str:
    """The CA bundle the hub's calls to the login provider trust ("" = the default).

    EXTRA_CA_BUNDLE is the image's system bundle, which holds certs/extra-ca/ from
    build time. When EXTRA_CA_FILE (checked by `check_files`) holds certificates, both
    go into one bundle written to the hub's data folder, because tornado takes a single
    `ca_certs` file.
    """
    extra = Path(settings.extra_ca_file).read_text() if settings.extra_ca_file else ""
    if not extra.strip():
        return settings.extra_ca_bundle
    base = settings.extra_ca_bundle or ssl.get_default_verify_paths().cafile or ""
    base_text = Path(base).read_text() if base and Path(base).is_file() else ""
    bundle = Path(settings.data_dir) / "login-provider-ca-bundle.pem"
    bundle.write_text(base_text.rstrip("\n") + "\n" + extra.strip() + "\n")
    return str(bundle)


def discover(issuer: str, ca_bundle: str) -> dict[str, Any]:
    """Read an OpenID provider's discovery document, trusting the extra CA bundle if any.

    OAuthenticator 17 does no discovery itself, so we resolve the endpoints once here.
    """
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(url, timeout=15, context=context) as response:
            document: dict[str, Any] = json.load(response)
    except (OSError, ValueError) as error:
        raise SettingsError(
            [
                f"OIDC_ISSUER={issuer!r}: could not read {url} ({error}). Check the URL, "
                "that the hub can reach it, and give the provider's CA as EXTRA_CA_FILE "
                "(or put it in certs/extra-ca/ and rebuild)"
            ]
        ) from error
    return document


@dataclass(frozen=True)
class OidcEndpoints:
    """Where AUTH=generic sends users and the hub, from the provider's discovery document."""

    authorize_url: str
    token_url: str
    # "" when the claims come from the ID token (OIDC_CLAIMS_FROM=id_token).
    userinfo_url: str


def discover_endpoints(
    oauth: OAuthSettings,
    ca_bundle: str,
    fetch: Callable[[str, str], Mapping[str, Any]] = discover,
) -> OidcEndpoints:
    """Read the provider's discovery document (OAuthenticator 17 does no discovery) and
    check it announces what the hub needs and the issuer OIDC_ISSUER names."""
    document = fetch(oauth.oidc_issuer, ca_bundle)
    needed = ["authorization_endpoint", "token_endpoint"]
    if oauth.claims_from == "userinfo":
        needed.append("userinfo_endpoint")
    problems = []
    missing = [key for key in needed if key not in document]
    if missing:
        problems.append(f"OIDC_ISSUER={oauth.oidc_issuer!r}: discovery document lacks {missing}")
    issuer = str(document.get("issuer", oauth.oidc_issuer)).rstrip("/")
    if issuer != oauth.oidc_issuer:
        # OpenID Connect Discovery 1.0, section 4.3: they must be identical.
        problems.append(
            f"OIDC_ISSUER={oauth.oidc_issuer!r} differs from the issuer the provider "
            f"announces ({issuer!r}): copy that value into OIDC_ISSUER"
        )
    if problems:
        raise SettingsError(problems)
    return OidcEndpoints(
        authorize_url=document["authorization_endpoint"],
        token_url=document["token_endpoint"],
        userinfo_url=document["userinfo_endpoint"] if oauth.claims_from == "userinfo" else "",
    )


def authenticator_config(
    settings: Settings, ca_bundle: str = "", oidc: OidcEndpoints | None = None
) -> tuple[str, dict[str, Any]]:
    """Return (authenticator class path, its traitlets as a dict).

    `ca_bundle` is `provider_ca_bundle`'s answer; `oidc` is required with AUTH=generic.
    """
    if settings.auth == "native":
        return AUTHENTICATOR_CLASSES["native"], {
            "admin_users": set(settings.admin_users),
            "admin_initial_password": settings.admin_initial_password,
            "signup_code": settings.signup_code,
            # NativeAuthenticator itself admits only accounts an admin (or the code) approved.
            "allow_all": True,
        }

    common: dict[str, Any] = {}
    if settings.allowed_users:
        common["allowed_users"] = set(settings.allowed_users)

    if settings.auth == "shared-password":
        config = {
            **common,
            "admin_users": set(settings.admin_users),
            "user_password": settings.shared_user_password,
            # Anyone with the shared password may log in: that is the point of this mode.
            "allow_all": not settings.allowed_users,
        }
        if settings.shared_admin_password:
            config["admin_password"] = settings.shared_admin_password
        return AUTHENTICATOR_CLASSES["shared-password"], config

    if settings.auth == "ldap":
        return AUTHENTICATOR_CLASSES["ldap"], _ldap_config(settings, common, ca_bundle)

    oauth = settings.oauth
    assert oauth is not None, "Settings.from_env sets oauth for every OAuth provider"
    config = {
        **common,
        # Not `admin_users`: OAuthenticator admits those before any allow rule (and
        # JupyterHub adds them to allowed_users), so an account merely named like an
        # admin got in as admin. These become admins only once the allow rules let
        # them in (providers.AdminsMustBeAllowed).
        "admins_by_name": set(settings.admin_users),
        "client_id": oauth.client_id,
        "client_secret": oauth.client_secret,
        "oauth_callback_url": oauth.callback_url,
        "enable_pkce": True,
        "validate_server_cert": True,
        "custom_403_message": NOT_ALLOWED_MESSAGE,
    }
    if ca_bundle:
        # OAuthenticator talks to the provider with tornado, which ignores REQUESTS_CA_BUNDLE.
        config["http_request_kwargs"] = {"ca_certs": ca_bundle}
    if settings.allowed_groups or settings.admin_groups:
        config["manage_groups"] = True
        config["allowed_groups"] = set(settings.allowed_groups)
        config["admin_groups"] = set(settings.admin_groups)
    open_to_all = not (settings.allowed_users or settings.allowed_groups)

    if settings.auth == "github":
        config["allowed_organizations"] = set(oauth.allowed_orgs)
        config["scope"] = ["read:org"] if oauth.allowed_orgs else []
        # Settings refuse AUTH=github without GITHUB_ALLOWED_ORGS or ALLOWED_USERS, and
        # with groups (GitHub sends none).
        config["allow_all"] = False
    elif settings.auth == "google":
        # Settings refuse groups with AUTH=google (Google sends no groups claim).
        config["hosted_domain"] = sorted(oauth.hosted_domains)
        # Settings refuse AUTH=google without GOOGLE_HOSTED_DOMAINS or ALLOWED_USERS.
        config["allow_all"] = False
    elif settings.auth == "cilogon":
        # Settings require CILOGON_IDP; `idps` replaced `allowed_idps` in OAuthenticator 17.4.
        derivation = {"username_derivation": {"username_claim": "email"}}
        config["idps"] = {oauth.cilogon_idp: derivation}
        config["allow_all"] = open_to_all
        if config.get("manage_groups"):
            # CILogon passes the campus IdP's groups on as a claim, usually isMemberOf.
            config["auth_state_groups_key"] = f"cilogon_user.{oauth.groups_claim}"
    else:  # generic OpenID Connect: Keycloak, Azure AD, Authentik, ...
        assert oidc is not None, "AUTH=generic needs discover_endpoints' answer"
        if oauth.claims_from == "id_token":
            # The claims come in the ID token the hub gets straight from token_url over
            # verified TLS (OIDC Core 3.1.3.7); OAuthenticator checks its audience and expiry.
            config["userdata_from_id_token"] = True
        else:
            config["userdata_url"] = oidc.userinfo_url
        config.update(
            authorize_url=oidc.authorize_url,
            token_url=oidc.token_url,
            scope=list(oauth.scopes),
            username_claim=oauth.username_claim,
            login_service=oauth.oidc_issuer.split("//", 1)[-1].split("/", 1)[0],
            allow_all=open_to_all,
        )
        if config.get("manage_groups"):
            # Groups come from the provider's claim (userinfo or ID token), e.g. "groups".
            config["auth_state_groups_key"] = f"oauth_user.{oauth.groups_claim}"
    if settings.login_service:
        config["login_service"] = settings.login_service
    return AUTHENTICATOR_CLASSES[settings.auth], config


def _ldap_config(settings: Settings, common: dict[str, Any], ca_bundle: str) -> dict[str, Any]:
    """LabLDAPAuthenticator's traits: TLS checked against the CA bundle, bind or search."""
    config: dict[str, Any] = {
        **common,
        # Directory accounts, proven by their password: JupyterHub admits and makes them admins.
        "admin_users": set(settings.admin_users),
        "server_address": settings.ldap_host,
        "server_port": settings.ldap_port,
        "tls_strategy": settings.ldap_tls,
        "user_attribute": settings.ldap_username_attribute,
        "allowed_group_names": set(settings.allowed_groups),
        "admin_group_names": set(settings.admin_groups),
        "allow_all": not (settings.allowed_users or settings.allowed_groups),
    }
    if settings.ldap_tls != "insecure":
        # ldap3 checks no certificate unless told to; then the CA and the host name.
        tls: dict[str, Any] = {"validate": ssl.CERT_REQUIRED}
        if ca_bundle:
            tls["ca_certs_file"] = ca_bundle
        config["tls_kwargs"] = tls
    if settings.ldap_bind_dn_template:
        config["bind_dn_template"] = [settings.ldap_bind_dn_template]
    else:
        config.update(
            lookup_dn=True,
            user_search_base=settings.ldap_user_search_base,
            lookup_dn_search_user=settings.ldap_search_user or None,
            lookup_dn_search_password=settings.ldap_search_password or None,
            lookup_dn_user_dn_attribute=settings.ldap_username_attribute,
        )
    if settings.ldap_group_search_base:
        config["group_search_base"] = settings.ldap_group_search_base
        # JupyterHub keeps each user's groups as the directory lists them at login.
        config["manage_groups"] = True
    return config
