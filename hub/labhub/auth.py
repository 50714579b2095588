"""Choose and configure the authenticator from validated settings.

`authenticator_config` is pure apart from OpenID Connect discovery (one HTTPS GET
at start-up, through `discover`), so every provider's configuration is unit-tested.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable
from typing import Any

from .settings import Settings, SettingsError

AUTHENTICATOR_CLASSES = {
    "shared-password": "jupyterhub.authenticators.shared.SharedPasswordAuthenticator",
    "github": "oauthenticator.github.GitHubOAuthenticator",
    "google": "oauthenticator.google.GoogleOAuthenticator",
    "generic": "oauthenticator.generic.GenericOAuthenticator",
    "cilogon": "oauthenticator.cilogon.CILogonOAuthenticator",
}

Discover = Callable[[str, str], dict[str, Any]]


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
                "that the hub can reach it, and put the provider's CA in certs/extra-ca/"
            ]
        ) from error
    return document


def authenticator_config(
    settings: Settings, discover: Discover = discover
) -> tuple[str, dict[str, Any]]:
    """Return (authenticator class path, its traitlets as a dict)."""
    common: dict[str, Any] = {"admin_users": set(settings.admin_users)}
    if settings.allowed_users:
        common["allowed_users"] = set(settings.allowed_users)

    if settings.auth == "shared-password":
        config = {
            **common,
            "user_password": settings.shared_user_password,
            # Anyone with the shared password may log in: that is the point of this mode.
            "allow_all": not settings.allowed_users,
        }
        if settings.shared_admin_password:
            config["admin_password"] = settings.shared_admin_password
        return AUTHENTICATOR_CLASSES["shared-password"], config

    oauth = settings.oauth
    assert oauth is not None, "Settings.from_env sets oauth for every OAuth provider"
    config = {
        **common,
        "client_id": oauth.client_id,
        "client_secret": oauth.client_secret,
        "oauth_callback_url": oauth.callback_url,
        "enable_pkce": True,
        "validate_server_cert": True,
    }
    if settings.extra_ca_bundle:
        # OAuthenticator talks to the provider with tornado, which ignores REQUESTS_CA_BUNDLE.
        config["http_request_kwargs"] = {"ca_certs": settings.extra_ca_bundle}
    if settings.allowed_groups or settings.admin_groups:
        config["manage_groups"] = True
        config["allowed_groups"] = set(settings.allowed_groups)
        config["admin_groups"] = set(settings.admin_groups)
    open_to_all = not (settings.allowed_users or settings.allowed_groups)

    if settings.auth == "github":
        config["allowed_organizations"] = set(oauth.allowed_orgs)
        config["scope"] = ["read:org"] if oauth.allowed_orgs else []
        config["allow_all"] = open_to_all and not oauth.allowed_orgs
        if settings.allowed_groups or settings.admin_groups:
            raise SettingsError(
                [
                    "ALLOWED_GROUPS/ADMIN_GROUPS are not used with AUTH=github: use "
                    "GITHUB_ALLOWED_ORGS=org or org:team, and ADMIN_USERS"
                ]
            )
    elif settings.auth == "google":
        config["hosted_domain"] = sorted(oauth.hosted_domains)
        config["allow_all"] = open_to_all and not oauth.hosted_domains
    elif settings.auth == "cilogon":
        idp = oauth.cilogon_idp or "https://cilogon.org/oauth2/idp"
        config["allowed_idps"] = {idp: {"username_derivation": {"username_claim": "email"}}}
        config["allow_all"] = open_to_all
    else:  # generic OpenID Connect: Keycloak, Azure AD, Authentik, ...
        document = discover(oauth.oidc_issuer, settings.extra_ca_bundle)
        missing = [
            key
            for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint")
            if key not in document
        ]
        if missing:
            raise SettingsError(
                [f"OIDC_ISSUER={oauth.oidc_issuer!r}: discovery document lacks {missing}"]
            )
        config.update(
            authorize_url=document["authorization_endpoint"],
            token_url=document["token_endpoint"],
            userdata_url=document["userinfo_endpoint"],
            scope=list(oauth.scopes),
            username_claim=oauth.username_claim,
            login_service=oauth.oidc_issuer.split("//", 1)[-1].split("/", 1)[0],
            allow_all=open_to_all,
        )
        if config.get("manage_groups"):
            # Groups come from the provider's claim (userinfo), e.g. Keycloak's "groups".
            config["auth_state_groups_key"] = f"oauth_user.{oauth.groups_claim}"
    return AUTHENTICATOR_CLASSES[settings.auth], config
