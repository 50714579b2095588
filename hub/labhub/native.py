"""The default login: NativeAuthenticator, one account and password per person.

Students sign up at /hub/signup with their own password (length and common-password
rules). A new account waits for an admin's approval at /hub/authorize, unless the
sign-up form carries the class's SIGNUP_CODE: the code approves the account created by
that very request and nothing else, so it is worthless for entering an existing one,
and it approves no name the hub already knows from an earlier login mode.
The first admin (ADMIN_USERS) is created at start-up with ADMIN_INITIAL_PASSWORD,
before anyone can sign up, so nobody can claim the name first. Repeated wrong
passwords lock an account for a while (NativeAuthenticator's lock-out).

NativeAuthenticator 1.3.0 predates JupyterHub 6: its login POST answered 500 to every
login there (it uses the removed `statsd`), and to passwords over 72 bytes with bcrypt 5.
The login page is therefore labhub's (`LoginHandler`); its template is still theirs.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from jupyterhub import orm
from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers as native_handlers
from tornado import web
from tornado.escape import url_escape
from tornado.httputil import url_concat
from traitlets import Unicode, default

# Our signup.html (with the sign-up code field) comes before NativeAuthenticator's.
TEMPLATES = str(Path(__file__).parent / "templates")
# bcrypt hashes at most 72 bytes; bcrypt 5 raises ValueError beyond that.
BCRYPT_MAX_BYTES = 72
INVALID_LOGIN = "Invalid username or password."


def fits_bcrypt(password: object) -> bool:
    """True for a password bcrypt can hash: text of at most 72 bytes in UTF-8."""
    try:
        return isinstance(password, str) and len(password.encode()) <= BCRYPT_MAX_BYTES
    except UnicodeEncodeError:  # lone surrogates
        return False


class LoginHandler(native_handlers.LoginHandler):  # type: ignore[misc]
    """NativeAuthenticator's login page, with JupyterHub 6's login flow.

    NativeAuthenticator 1.3.0's own POST handler uses `self.statsd`, which JupyterHub 6
    removed (every login was a 500), and its page renderer cannot draw JupyterHub's
    error page. A form without a username or with an unhashable password is a failed
    login here, never a 500.
    """

    def _render(
        self, login_error: str | None = None, username: str | None = None, **namespace: Any
    ) -> Any:
        # JupyterHub renders form errors through _render(**ns) with sync=True.
        return self.render_template(
            "native-login.html",
            sync=namespace.get("sync", False),
            next=url_escape(self.get_argument("next", default="")),
            username=username,
            login_error=login_error or namespace.get("login_error"),
            custom_html=self.authenticator.custom_html,
            login_url=self.settings["login_url"],
            enable_signup=self.authenticator.enable_signup,
            two_factor_auth=self.authenticator.allow_2fa,
            authenticator_login_url=url_concat(
                self.authenticator.login_url(self.hub.base_url),
                {"next": self.get_argument("next", "")},
            ),
        )

    async def post(self) -> None:
        data = {
            name: self.get_argument(name, strip=name == "username")
            for name in self.request.body_arguments
            if name != "_xsrf"
        }
        username, password = data.get("username", ""), data.get("password")
        user = await self.login_user(data) if username and fits_bcrypt(password) else None
        if user:
            self._jupyterhub_user = user
            self.redirect(self.get_next_url(user))
            return
        error = INVALID_LOGIN
        account = self.authenticator.get_user(username) if username else None
        if (
            account is not None
            and not account.is_authorized
            and fits_bcrypt(password)
            and account.is_valid_password(password)
        ):
            error = f"User {username} has not been authorized by an administrator yet."
        self.set_status(403)
        self.finish(await self._render(login_error=error, username=username))


class ChangePasswordHandler(native_handlers.ChangePasswordHandler):  # type: ignore[misc]
    """A current password bcrypt cannot hash is a wrong one, not a 500."""

    @web.authenticated
    async def post(self) -> None:
        if fits_bcrypt(self.get_body_argument("old_password", "", strip=False)):
            await super().post()
            return
        user = await self.get_current_user()
        html = await self.render_template(
            "change-password.html",
            user_name=user.name,
            result_message="Your current password was incorrect. Please try again.",
            alert="alert-danger",
        )
        self.finish(html)


class SignUpHandler(native_handlers.SignUpHandler):  # type: ignore[misc]
    """Sign-up; the right SIGNUP_CODE approves the account this request created."""

    code_accepted = False

    def render_template(self, name: str, **namespace: Any) -> Any:
        # Our signup.html states the password rule the authenticator applies.
        rule = self.authenticator.minimum_password_length
        return super().render_template(name, minimum_password_length=rule, **namespace)

    async def post(self) -> None:
        username = self.authenticator.normalize_username(self.get_body_argument("username", ""))
        code = self.get_body_argument("signup_code", "", strip=True)
        # A name the hub already knows (a user from an earlier login mode, with a home
        # volume) has no native account yet: an admin, not the code, says who gets it.
        known = orm.User.find(self.db, username) is not None
        self.code_accepted = self.authenticator.signup_code_matches(code) and not known
        await super().post()

    def get_result_message(
        self,
        user: Any,
        assume_user_is_human: bool,
        username_already_taken: bool,
        confirmation_matches: bool,
        user_is_admin: bool,
    ) -> tuple[str, str]:
        """Called once the account is created (`user`) or refused (None), before rendering.

        `user` is only ever an account created by this request, so approving it here
        cannot open an existing one.
        """
        if user is not None and not user.is_authorized and self.code_accepted:
            user.is_authorized = True
            self.db.commit()
            return "alert-success", "Your account is ready: log in with your new password."
        if user is not None and not user.is_authorized:
            return "alert-info", (
                "Your account waits for an administrator's approval (no valid sign-up "
                "code was given). You can log in once they approve it."
            )
        return super().get_result_message(  # type: ignore[no-any-return]
            user, assume_user_is_human, username_already_taken, confirmation_matches, user_is_admin
        )


class LabNativeAuthenticator(NativeAuthenticator):  # type: ignore[misc]
    """NativeAuthenticator with the class sign-up code and the first admin made at start-up."""

    signup_code = Unicode(
        "",
        config=True,
        help="""Code that approves a new account at sign-up (SIGNUP_CODE), e.g. written on
        the board in the first class. Empty: every sign-up waits for an admin at
        /hub/authorize. It never opens an existing account.""",
    )
    admin_initial_password = Unicode(
        "",
        config=True,
        help="""Password of the first admin (the one name in admin_users), used only to
        create that account at start-up when it does not exist yet. Change it afterwards
        at /hub/change-password; later starts leave the account as it is.""",
    )

    @default("minimum_password_length")
    def _minimum_password_length(self) -> int:
        return 10

    @default("check_common_password")
    def _check_common_password(self) -> bool:
        return True

    @default("allowed_failed_logins")
    def _allowed_failed_logins(self) -> int:
        # After 5 wrong passwords in a row an account refuses every login (the right
        # password too) for seconds_before_next_try (600 s): guessing a classmate's
        # password gets about 700 tries a day.
        return 5

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.create_first_admin()

    def create_first_admin(self) -> None:
        """Create the admin accounts that do not exist yet, before anyone can sign up."""
        for name in sorted(self.admin_users):
            if self.user_exists(name):
                continue
            if not self.create_user(name, self.admin_initial_password):
                raise ValueError(
                    f"could not create the first admin {name!r}: check ADMIN_USERS (a valid "
                    "username) and ADMIN_INITIAL_PASSWORD (16 to 72 bytes, not a common one)"
                )
            self.log.info("Created the first admin account %r (ADMIN_USERS)", name)

    def signup_code_matches(self, code: str) -> bool:
        """Whether `code` is the class's sign-up code (compared in constant time)."""
        if not self.signup_code or not code:
            return False
        return hmac.compare_digest(code.encode(), self.signup_code.encode())

    def is_password_strong(self, password: str) -> bool:
        return fits_bcrypt(password) and bool(super().is_password_strong(password))

    async def authenticate(self, handler: Any, data: dict[str, Any]) -> Any:
        if not isinstance(data.get("username"), str) or not fits_bcrypt(data.get("password")):
            return None
        return await super().authenticate(handler, data)

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        ours = {
            r"/login": LoginHandler,
            r"/signup": SignUpHandler,
            r"/change-password": ChangePasswordHandler,
        }
        return [(path, ours.get(path, handler)) for path, handler in super().get_handlers(app)]
