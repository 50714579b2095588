"""LDAP and Active Directory login: ldapauthenticator's bind, plus the directory's groups.

ldapauthenticator 2.0 checks a password by binding as the user (a DN from a template,
or found first by a search account) and escapes the username in DNs and filters. What
it lacks for labhub, added here:

- groups: it only tests membership of the group DNs it is given and maps none to
  JupyterHub groups, so GPU profiles and quotas could not follow them. Here every group
  under `group_search_base` that lists the user (member or uniqueMember) becomes a
  JupyterHub group of the same name (its cn), allowed and admin groups by that name;
- refusal: someone the directory knows but the hub does not admit got the login form's
  "Invalid username or password"; here, as with OAuth, a 403 that says why;
- the event loop: ldap3 is synchronous, and ldapauthenticator calls it on the hub's
  loop, so one slow directory answer stalled every user's page. Here a login runs in
  a worker thread, and a directory that cannot be reached or whose certificate fails
  gives a 502 that says so, not a 500.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldapauthenticator import LDAPAuthenticator
from tornado import web
from traitlets import Set, Unicode

from .auth import NOT_ALLOWED_MESSAGE

DIRECTORY_FAILED = (
    "The hub could not check your password with the university directory (LDAP): the "
    "directory did not answer, or its certificate was not trusted. Try again in a moment; "
    "if it keeps failing, tell the hub's administrators (the hub's log has the details)."
)
# Where get_user_attributes hands the groups to authenticate, inside ldapauthenticator's
# auth_state["user_attributes"] (the one hook with the user's bound connection and DN).
_GROUPS = "labhub_groups"


class LabLDAPAuthenticator(LDAPAuthenticator):  # type: ignore[misc]
    """LDAPAuthenticator with JupyterHub groups, admin groups and explained refusals."""

    group_search_base = Unicode(
        "",
        config=True,
        help="""DN under which the directory's groups are (LDAP_GROUP_SEARCH_BASE), e.g.
        ou=groups,dc=uni,dc=edu. Each group listing the user becomes a JupyterHub group
        named by its cn. Empty: no groups.""",
    )
    allowed_group_names = Set(
        Unicode(),
        config=True,
        help="""cn of directory groups whose members may log in (ALLOWED_GROUPS), e.g.
        {"students"}. ldapauthenticator's own `allowed_groups` takes full DNs and is not
        used.""",
    )
    admin_group_names = Set(
        Unicode(),
        config=True,
        help="""cn of directory groups whose members log in as admins (ADMIN_GROUPS).""",
    )

    async def authenticate(self, handler: Any, data: dict[str, str]) -> Any:
        # Directory names are case-insensitive; ldapauthenticator's username check is not.
        data = {**data, "username": data.get("username", "").strip().lower()}
        try:
            user = await asyncio.to_thread(self._authenticate_blocking, handler, data)
        except LDAPException as error:
            self.log.error("LDAP login failed at %s: %r", self.server_address, error)
            raise web.HTTPError(502, DIRECTORY_FAILED) from error
        if user is None:
            return None
        groups = sorted(user["auth_state"]["user_attributes"].pop(_GROUPS, []))
        user["auth_state"]["ldap_groups"] = groups
        if self.group_search_base:
            user["groups"] = groups
        if self.admin_group_names:
            # Decided at every login, so that leaving the group ends admin rights too.
            in_group = bool(self.admin_group_names.intersection(groups))
            user["admin"] = in_group or user["name"] in self.admin_users
        return user

    def _authenticate_blocking(self, handler: Any, data: dict[str, str]) -> Any:
        """ldapauthenticator's login, run to completion in this worker thread."""
        return asyncio.run(super().authenticate(handler, data))

    def get_user_attributes(self, conn: ldap3.Connection, userdn: str) -> dict[str, Any]:
        attributes: dict[str, Any] = super().get_user_attributes(conn, userdn)
        return {**attributes, _GROUPS: self.directory_groups(conn, userdn)}

    def directory_groups(self, conn: ldap3.Connection, userdn: str) -> list[str]:
        """cn of every group under group_search_base that lists `userdn` as a member."""
        if not self.group_search_base:
            return []
        member = escape_filter_chars(userdn)
        conn.search(
            search_base=self.group_search_base,
            search_scope=ldap3.SUBTREE,
            search_filter=f"(|(member={member})(uniqueMember={member}))",
            attributes=["cn"],
        )
        names = {cn for entry in conn.entries for cn in entry.entry_attributes_as_dict["cn"]}
        return sorted(str(name) for name in names)

    async def check_allowed(self, username: str, auth_model: dict[str, Any] | None = None) -> bool:
        # Called only once the password was right: a refusal may say why.
        groups = set((auth_model or {}).get("groups") or [])
        if groups & (self.allowed_group_names | self.admin_group_names):
            return True
        if await super().check_allowed(username, auth_model):
            return True
        raise web.HTTPError(403, NOT_ALLOWED_MESSAGE)
