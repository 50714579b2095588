"""AUTH=ldap: its settings, the authenticator's traits, and LabLDAPAuthenticator's own
logic (groups, admins, refusals) without a directory; tests/test_ldap.py has one."""

import asyncio
import ssl
import time
from typing import Any

import pytest
from labhub.auth import NOT_ALLOWED_MESSAGE, authenticator_config
from labhub.ldap import DIRECTORY_FAILED, LabLDAPAuthenticator
from labhub.settings import Settings, SettingsError
from ldap3.core.exceptions import LDAPSocketOpenError
from ldapauthenticator import LDAPAuthenticator
from tornado import web

pytestmark = pytest.mark.unit

LDAP = {
    "DOMAIN": "hub.example.edu",
    "CONFIGPROXY_AUTH_TOKEN": "t" * 64,
    "AUTH": "ldap",
    "LDAP_URL": "ldap://ldap.uni.edu",
    "LDAP_BIND_DN_TEMPLATE": "uid={username},ou=people,dc=uni,dc=edu",
}
SEARCH = {
    **LDAP,
    "LDAP_BIND_DN_TEMPLATE": "",
    "LDAP_USER_SEARCH_BASE": "ou=people,dc=uni,dc=edu",
    "LDAP_SEARCH_USER": "cn=labhub,ou=services,dc=uni,dc=edu",
    "LDAP_SEARCH_PASSWORD": "s3cret",
    "LDAP_USERNAME_ATTRIBUTE": "sAMAccountName",
    "LDAP_GROUP_SEARCH_BASE": "ou=groups,dc=uni,dc=edu",
    "ALLOWED_GROUPS": "students",
    "ADMIN_GROUPS": "staff",
}


def traits(env: dict[str, str]) -> dict[str, Any]:
    cls, config = authenticator_config(Settings.from_env(env), ca_bundle="/ca.pem")
    assert cls == "labhub.ldap.LabLDAPAuthenticator"
    return config


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, ("ldap.uni.edu", 389, "before_bind")),
        ({"LDAP_URL": "ldaps://ldap.uni.edu"}, ("ldap.uni.edu", 636, "on_connect")),
        ({"LDAP_URL": "ldaps://dc1.ad.uni.edu:3269/"}, ("dc1.ad.uni.edu", 3269, "on_connect")),
        (
            {"LDAP_URL": "ldap://10.0.0.5:1389", "LDAP_ALLOW_PLAINTEXT": "TRUE"},
            ("10.0.0.5", 1389, "insecure"),
        ),
    ],
    ids=["starttls", "ldaps", "ldaps-port", "plaintext-opt-in"],
)
def test_the_url_chooses_server_port_and_tls(
    overrides: dict[str, str], expected: tuple[str, int, str]
) -> None:
    config = traits({**LDAP, **overrides})
    assert (config["server_address"], config["server_port"], config["tls_strategy"]) == expected
    if expected[2] == "insecure":
        assert "tls_kwargs" not in config
    else:
        # ldap3 checks no certificate by default: here the CA bundle and host name.
        assert config["tls_kwargs"] == {"validate": ssl.CERT_REQUIRED, "ca_certs_file": "/ca.pem"}


def test_bind_dn_template_binds_directly_and_lets_every_directory_account_in() -> None:
    config = traits(LDAP)
    assert config["bind_dn_template"] == ["uid={username},ou=people,dc=uni,dc=edu"]
    assert "lookup_dn" not in config
    assert config["allow_all"] is True
    assert "manage_groups" not in config


def test_search_then_bind_with_groups() -> None:
    config = traits({**SEARCH, "ADMIN_USERS": "carol"})
    assert config["lookup_dn"] is True
    assert config["user_search_base"] == "ou=people,dc=uni,dc=edu"
    assert config["lookup_dn_search_user"] == "cn=labhub,ou=services,dc=uni,dc=edu"
    assert config["lookup_dn_search_password"] == "s3cret"
    assert config["user_attribute"] == config["lookup_dn_user_dn_attribute"] == "sAMAccountName"
    assert config["group_search_base"] == "ou=groups,dc=uni,dc=edu"
    assert config["manage_groups"] is True
    assert config["allowed_group_names"] == {"students"}
    assert config["admin_group_names"] == {"staff"}
    assert config["admin_users"] == {"carol"}
    assert config["allow_all"] is False


def test_the_traits_configure_ldapauthenticator() -> None:
    """Every trait exists and takes its value (traitlets ignores unknown ones)."""
    from traitlets.config import Config

    config = traits(SEARCH)
    authenticator = LabLDAPAuthenticator(config=Config({"LabLDAPAuthenticator": config}))
    for name, value in config.items():
        got = getattr(authenticator, name)
        assert (got.name if name == "tls_strategy" else got) == value, name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"LDAP_URL": ""}, "LDAP_URL='' is not a directory address"),
        ({"LDAP_URL": "https://ldap.uni.edu"}, "is not a directory address"),
        ({"LDAP_URL": "ldap://ldap.uni.edu/dc=uni"}, "is not a directory address"),
        ({"LDAP_URL": "ldap://ldap.uni.edu:99999"}, "is not a directory address"),
        ({"LDAP_URL": "ldaps://10.0.0.5"}, "names the directory by IP address"),
        ({"LDAP_ALLOW_PLAINTEXT": "yes"}, "LDAP_ALLOW_PLAINTEXT='yes' is not valid"),
        (
            {"LDAP_URL": "ldaps://ldap.uni.edu", "LDAP_ALLOW_PLAINTEXT": "true"},
            "contradicts LDAP_URL=ldaps",
        ),
        ({"LDAP_BIND_DN_TEMPLATE": ""}, "needs exactly one of LDAP_BIND_DN_TEMPLATE"),
        ({"LDAP_USER_SEARCH_BASE": "ou=people,dc=uni"}, "needs exactly one of"),
        ({"LDAP_BIND_DN_TEMPLATE": "uid=x,dc=uni"}, "must hold {username} once"),
        ({"LDAP_BIND_DN_TEMPLATE": "uid={username},o={org}"}, "must hold {username} once"),
        ({"LDAP_SEARCH_USER": "cn=x"}, "LDAP_SEARCH_USER and LDAP_SEARCH_PASSWORD go together"),
        ({"LDAP_USERNAME_ATTRIBUTE": "uid)(x"}, "is not an attribute name"),
        ({"ALLOWED_GROUPS": "students"}, "need LDAP_GROUP_SEARCH_BASE"),
        ({"LOGIN_SERVICE": "University SSO"}, "LOGIN_SERVICE='University SSO' names the button"),
        ({"AUTH": "bogus"}, "choose one of native, shared-password, github, google, generic"),
    ],
    ids=[
        "no-url",
        "wrong-scheme",
        "path",
        "bad-port",
        "ip-with-tls",
        "plaintext-not-a-boolean",
        "plaintext-with-ldaps",
        "neither-template-nor-search",
        "both-template-and-search",
        "template-without-username",
        "template-with-other-braces",
        "search-user-without-password",
        "bad-attribute",
        "groups-without-base",
        "login-service-on-a-form",
        "unknown-auth-lists-ldap",
    ],
)
def test_a_wrong_ldap_setting_stops_start_up_with_the_fix(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({**LDAP, **overrides})
    assert message in str(error.value)


def test_ldap_is_an_auth_choice() -> None:
    """Before issue 19 the hub refused AUTH=ldap."""
    assert Settings.from_env(LDAP).auth == "ldap"


# --- LabLDAPAuthenticator without a directory ----------------------------------------


class Entry:
    def __init__(self, cn: list[str]) -> None:
        self.entry_attributes_as_dict = {"cn": cn}


class RecordingConnection:
    """Records the group search and answers with the given entries."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.searches: list[dict[str, Any]] = []

    def search(self, **kwargs: Any) -> bool:
        self.searches.append(kwargs)
        return bool(self.entries)


def authenticator(**config: Any) -> LabLDAPAuthenticator:
    return LabLDAPAuthenticator(bind_dn_template=["uid={username},dc=uni"], **config)


def test_groups_are_searched_with_the_users_dn_escaped() -> None:
    conn = RecordingConnection([Entry(["students"]), Entry(["gpu-users", "gpu"])])
    found = authenticator(group_search_base="ou=groups,dc=uni").directory_groups(
        conn, "uid=a*)(cn=*,dc=uni"
    )
    assert found == ["gpu", "gpu-users", "students"]
    (search,) = conn.searches
    assert search["search_base"] == "ou=groups,dc=uni"
    member = r"uid=a\2a\29\28cn=\2a,dc=uni"
    assert search["search_filter"] == f"(|(member={member})(uniqueMember={member}))"


def test_no_group_base_no_group_search() -> None:
    conn = RecordingConnection([Entry(["students"])])
    assert authenticator().directory_groups(conn, "uid=a,dc=uni") == []
    assert conn.searches == []


def login_as(
    monkeypatch: pytest.MonkeyPatch, groups: list[str], **config: Any
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """authenticate() with ldapauthenticator's own login replaced by a successful one."""
    seen: dict[str, str] = {}

    async def bound(self: Any, handler: Any, data: dict[str, str]) -> dict[str, Any]:
        seen.update(data)
        attributes = {"labhub_groups": groups}
        return {"name": data["username"], "auth_state": {"user_attributes": attributes}}

    monkeypatch.setattr(LDAPAuthenticator, "authenticate", bound)
    model = asyncio.run(
        authenticator(group_search_base="ou=groups,dc=uni", **config).authenticate(
            None, {"username": " Alice ", "password": "pw"}
        )
    )
    return model, seen


def test_directory_groups_become_hub_groups_and_admin_groups_admins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, seen = login_as(monkeypatch, ["staff", "gpu"], admin_group_names={"staff"})
    assert seen["username"] == "alice"
    assert model is not None
    assert model["groups"] == ["gpu", "staff"]
    assert model["admin"] is True
    assert model["auth_state"] == {"user_attributes": {}, "ldap_groups": ["gpu", "staff"]}


@pytest.mark.parametrize(
    ("config", "admin"),
    [
        ({"admin_group_names": {"staff"}}, False),
        ({"admin_group_names": {"staff"}, "admin_users": {"alice"}}, True),
        ({}, None),
    ],
    ids=["left-the-admin-group", "named-admin", "no-admin-groups"],
)
def test_outside_the_admin_groups_is_no_admin(
    monkeypatch: pytest.MonkeyPatch, config: dict[str, Any], admin: bool | None
) -> None:
    """False, not unset: JupyterHub keeps an unset flag, so a former staff member would
    stay admin."""
    model, _ = login_as(monkeypatch, ["students"], **config)
    assert model is not None and model.get("admin") is admin


def test_an_unreachable_or_untrusted_directory_is_a_502_that_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: Any, handler: Any, data: dict[str, str]) -> None:
        raise LDAPSocketOpenError("socket ssl wrapping error: certificate verify failed")

    monkeypatch.setattr(LDAPAuthenticator, "authenticate", broken)
    with pytest.raises(web.HTTPError) as error:
        asyncio.run(authenticator().authenticate(None, {"username": "a", "password": "p"}))
    assert error.value.status_code == 502
    assert error.value.log_message == DIRECTORY_FAILED


@pytest.mark.parametrize(
    ("groups", "allowed"),
    [(["students"], True), (["staff"], True), (["visitors"], False), ([], False)],
    ids=["allowed-group", "admin-group", "other-group", "no-group"],
)
def test_outside_the_groups_is_a_403_with_the_clear_message(
    groups: list[str], allowed: bool
) -> None:
    hub = authenticator(allowed_group_names={"students"}, admin_group_names={"staff"})
    check = hub.check_allowed("alice", {"name": "alice", "groups": groups})
    if allowed:
        assert asyncio.run(check) is True
    else:
        with pytest.raises(web.HTTPError) as error:
            asyncio.run(check)
        assert error.value.status_code == 403
        assert error.value.log_message == NOT_ALLOWED_MESSAGE


def test_allowed_users_pass_without_a_group() -> None:
    hub = authenticator(allowed_group_names={"students"}, allowed_users={"carol"})
    assert asyncio.run(hub.check_allowed("carol", {"name": "carol", "groups": []})) is True


def test_a_slow_directory_does_not_stall_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """ldap3 blocks; ldapauthenticator calls it on the event loop. Here the loop keeps
    serving other requests (a ticker) while a login waits 0.5 s for the directory."""

    async def slow(self: Any, handler: Any, data: dict[str, str]) -> None:
        time.sleep(0.5)  # what ldap3 does while the directory answers slowly

    monkeypatch.setattr(LDAPAuthenticator, "authenticate", slow)

    async def login_while_ticking() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        await authenticator().authenticate(None, {"username": "alice", "password": "pw"})
        ticker.cancel()
        return ticks

    assert asyncio.run(login_while_ticking()) >= 20
