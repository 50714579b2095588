"""One validated settings object, built once from the environment at hub start-up.

Every setting has exactly one source: a variable in `.env` (documented in
`.env.example`). `Settings.from_env` reads them all, checks them all, and raises
one `SettingsError` listing every problem, each naming the variable and the fix,
so that a wrong setting stops start-up with a message instead of a half-working hub.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

AUTH_CHOICES = ("native", "shared-password", "github", "google", "generic", "cilogon", "ldap")
OAUTH_CHOICES = ("github", "google", "generic", "cilogon")
# Names of a role, not of a person: any provider may give them to anyone (on GitHub the
# account `admin` belongs to a stranger), so they never name an admin in OAuth modes.
ROLE_NAMES = frozenset({"admin", "administrator", "root", "superuser", "sysadmin", "jupyterhub"})
# NativeAuthenticator refuses these in a username; JupyterHub lowercases usernames.
_NATIVE_USERNAME = re.compile(r"^[^A-Z\s,/]{1,128}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgG]?)$")
# Linux interface names: at most 15 characters; these are also safe in iptables chain names.
_BRIDGE = re.compile(r"^[A-Za-z0-9_-]{1,15}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$"
)

T = TypeVar("T")


class SettingsError(ValueError):
    """Raised with every problem found, one per line, each naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"labhub cannot start: {len(problems)} setting(s) to fix in .env "
            f"(see .env.example):\n{lines}"
        )


def _split(value: str) -> frozenset[str]:
    return frozenset(item.strip() for item in re.split(r"[,\s]+", value) if item.strip())


def parse_memory(text: str) -> int:
    """'4G' -> bytes. Accepts the units Docker accepts: k, m, g (powers of 1024)."""
    match = _MEMORY.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size; write it like 512M or 4G")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit])


@dataclass(frozen=True)
class OAuthSettings:
    """What every OAuth provider needs, plus the provider-specific knobs."""

    client_id: str
    client_secret: str
    callback_url: str
    allowed_orgs: frozenset[str] = frozenset()
    hosted_domains: frozenset[str] = frozenset()
    oidc_issuer: str = ""
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    scopes: tuple[str, ...] = ()
    cilogon_idp: str = ""
    # generic: where the username and groups claims are read (userinfo or id_token).
    claims_from: str = "userinfo"


@dataclass(frozen=True)
class Settings:
    """Everything the hub needs, validated. Field docs live in `.env.example`."""

    domain: str
    https_port: int
    auth: str
    configproxy_auth_token: str
    workspace_image: str
    docker_network: str
    mem_limit: int
    cpu_limit: float
    shm_size: int
    pids_limit: int
    idle_timeout: int
    gpu_idle_timeout: int
    concurrent_spawn_limit: int
    admin_users: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = frozenset()
    allowed_users: frozenset[str] = frozenset()
    allowed_groups: frozenset[str] = frozenset()
    shared_admin_password: str = ""
    shared_user_password: str = ""
    # native: the first admin's password (creates the account once) and the class code.
    admin_initial_password: str = ""
    signup_code: str = ""
    oauth: OAuthSettings | None = None
    extra_ca_bundle: str = ""
    # EXTRA_CA_FILE, as the hub sees it: a PEM file mounted at run time (compose).
    extra_ca_file: str = ""
    gpu_inventory: str = "none"
    gpu_profiles: str = ""
    gpu_db: str = "/srv/jupyterhub/gpu.sqlite"
    gpu_queue: bool = False
    gpu_queue_timeout: int = 600
    gpu_quota_user_hours: float | None = None
    gpu_quota_group_hours: Mapping[str, float] = field(default_factory=dict)
    # OAuth modes: the login button's "Sign in with ..." name (LOGIN_SERVICE).
    login_service: str = ""
    # AUTH=ldap (_ldap_settings): the directory, how a login finds its entry, its groups.
    ldap_url: str = ""
    ldap_host: str = ""
    ldap_port: int = 0
    # ldapauthenticator's tls_strategy: before_bind (StartTLS), on_connect (ldaps) or insecure.
    ldap_tls: str = "before_bind"
    ldap_bind_dn_template: str = ""
    ldap_user_search_base: str = ""
    ldap_search_user: str = ""
    ldap_search_password: str = ""
    ldap_username_attribute: str = "uid"
    ldap_group_search_base: str = ""
    data_dir: str = "/srv/jupyterhub"
    debug: bool = False
    subdomains: bool = False

    @property
    def public_url(self) -> str:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{self.domain}{port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and check every variable; raise one SettingsError with all problems."""
        problems: list[str] = []

        def get(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        def convert(name: str, default: str, parse: Callable[[str], T], hint: str) -> T | None:
            raw = get(name, default)
            try:
                return parse(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not valid: {hint}")
                return None

        def positive_int(text: str) -> int:
            value = int(text)
            if value <= 0:
                raise ValueError(text)
            return value

        def positive_float(text: str) -> float:
            value = float(text)
            if value <= 0:
                raise ValueError(text)
            return value

        domain = get("DOMAIN", "localhost")
        if not _DOMAIN.match(domain):
            problems.append(
                f"DOMAIN={domain!r} is not a host name: use the name students type, "
                "e.g. gpu.lab.example.edu (no scheme, no port)"
            )
        https_port = convert("HTTPS_PORT", "443", positive_int, "a port number such as 443")
        if https_port is not None and https_port > 65535:
            problems.append(f"HTTPS_PORT={https_port} is not a port: use 1-65535")

        auth = get("AUTH", "native")
        if auth not in AUTH_CHOICES:
            problems.append(f"AUTH={auth!r} is unknown: choose one of {', '.join(AUTH_CHOICES)}")

        token = get("CONFIGPROXY_AUTH_TOKEN")
        if len(token) < 32:
            problems.append(
                "CONFIGPROXY_AUTH_TOKEN is missing or shorter than 32 characters: "
                "run `make env` to generate one (openssl rand -hex 32)"
            )

        admin_users = _split(get("ADMIN_USERS"))
        allowed_users = _split(get("ALLOWED_USERS"))
        shared_admin = get("SHARED_ADMIN_PASSWORD")
        shared_user = get("SHARED_USER_PASSWORD")
        admin_initial = get("ADMIN_INITIAL_PASSWORD")
        signup_code = get("SIGNUP_CODE")
        if auth == "native":
            _check_native(admin_users, allowed_users, admin_initial, signup_code, problems)
        if auth == "shared-password":
            _check_workshop(get("WORKSHOP_MODE", "false").lower(), problems)
            if len(shared_user) < 8:
                problems.append(
                    "SHARED_USER_PASSWORD is missing or shorter than 8 characters: "
                    "delete it from .env and run `make env` to generate one"
                )
            if shared_admin and len(shared_admin) < 32:
                problems.append(
                    "SHARED_ADMIN_PASSWORD is shorter than 32 characters (JupyterHub's minimum): "
                    "delete it from .env and run `make env` to generate one"
                )
            if shared_admin and not admin_users:
                problems.append(
                    "SHARED_ADMIN_PASSWORD is set but ADMIN_USERS is empty: "
                    "name the admin, e.g. ADMIN_USERS=teacher"
                )
            if shared_admin and shared_admin == shared_user:
                problems.append(
                    "SHARED_ADMIN_PASSWORD and SHARED_USER_PASSWORD are equal: they must differ"
                )

        oauth = None
        if auth in OAUTH_CHOICES:
            oauth = _oauth_settings(auth, env, domain, https_port or 443, problems)
            _check_oauth_identities(auth, oauth, admin_users, allowed_users, problems)

        login_service = get("LOGIN_SERVICE")
        if login_service and auth not in OAUTH_CHOICES:
            problems.append(
                f"LOGIN_SERVICE={login_service!r} names the button of an OAuth login; "
                f"AUTH={auth} shows a username and password form: leave it empty"
            )
        elif len(login_service) > 60:
            problems.append("LOGIN_SERVICE is longer than 60 characters: use a short name")
        ldap = _ldap_settings(get, problems) if auth == "ldap" else {}

        mem_limit = convert("USER_MEM_LIMIT", "4G", parse_memory, "a size such as 2G or 512M")
        shm_size = convert("USER_SHM_SIZE", "1G", parse_memory, "a size such as 1G")
        if mem_limit is not None and mem_limit < 256 * 1024**2:
            problems.append("USER_MEM_LIMIT is below 256M: JupyterLab alone needs about 150M")
        cpu_limit = convert(
            "USER_CPU_LIMIT", "2", positive_float, "a number of CPUs such as 2 or 0.5"
        )
        pids_limit = convert("USER_PIDS_LIMIT", "1024", positive_int, "a number such as 1024")
        idle_timeout = convert("IDLE_TIMEOUT", "3600", positive_int, "seconds, e.g. 3600")
        gpu_idle_timeout = convert("GPU_IDLE_TIMEOUT", "1800", positive_int, "seconds, e.g. 1800")
        spawn_limit = convert("CONCURRENT_SPAWN_LIMIT", "40", positive_int, "a number such as 40")

        image = get("WORKSPACE_IMAGE", "labhub/workspace:0.1.0")
        if not image or image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
            problems.append(
                f"WORKSPACE_IMAGE={image!r} needs an explicit tag (not :latest), "
                "e.g. labhub/workspace:0.1.0, so that every user runs the same image"
            )
        network = get("DOCKER_NETWORK", "labhub")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", network):
            problems.append(f"DOCKER_NETWORK={network!r} is not a Docker network name")

        gpu_inventory = get("GPU_INVENTORY", "none")
        if gpu_inventory not in ("none", "auto") and not gpu_inventory.startswith("/"):
            problems.append(
                f"GPU_INVENTORY={gpu_inventory!r}: use none, auto, or an absolute path "
                "inside the hub container such as /srv/labhub/gpus.json"
            )

        data_dir = get("HUB_DATA_DIR", "/srv/jupyterhub")
        gpu = _gpu_settings(env, data_dir, problems)

        subdomains = get("SUBDOMAINS", "false").lower()
        if subdomains not in ("true", "false"):
            problems.append(f"SUBDOMAINS={subdomains!r}: use true or false")
        elif subdomains == "true" and "." not in domain:
            problems.append(
                f"SUBDOMAINS=true needs a DOMAIN with a dot, not {domain!r}: user servers "
                "live at <user>.DOMAIN, e.g. DOMAIN=hub.lab.example.edu with DNS *.hub.lab..."
            )

        if problems:
            raise SettingsError(problems)
        assert https_port is not None and mem_limit is not None and shm_size is not None
        assert cpu_limit is not None and pids_limit is not None and idle_timeout is not None
        assert gpu_idle_timeout is not None and spawn_limit is not None
        return cls(
            domain=domain,
            https_port=https_port,
            auth=auth,
            configproxy_auth_token=token,
            workspace_image=image,
            docker_network=network,
            mem_limit=mem_limit,
            cpu_limit=cpu_limit,
            shm_size=shm_size,
            pids_limit=pids_limit,
            idle_timeout=idle_timeout,
            gpu_idle_timeout=gpu_idle_timeout,
            concurrent_spawn_limit=spawn_limit,
            admin_users=admin_users,
            admin_groups=_split(get("ADMIN_GROUPS")),
            allowed_users=allowed_users,
            allowed_groups=_split(get("ALLOWED_GROUPS")),
            shared_admin_password=shared_admin,
            shared_user_password=shared_user,
            admin_initial_password=admin_initial,
            signup_code=signup_code,
            oauth=oauth,
            extra_ca_bundle=get("EXTRA_CA_BUNDLE"),
            extra_ca_file=get("EXTRA_CA_FILE"),
            gpu_inventory=gpu_inventory,
            **gpu,
            login_service=login_service,
            **ldap,
            data_dir=data_dir,
            debug=get("HUB_DEBUG", "false").lower() == "true",
            subdomains=subdomains == "true",
        )


def _check_native(
    admin_users: frozenset[str],
    allowed_users: frozenset[str],
    admin_initial: str,
    signup_code: str,
    problems: list[str],
) -> None:
    """AUTH=native: one first admin, created at start-up with a generated password."""
    if allowed_users:
        # NativeAuthenticator approves an allowed name at sign-up: whoever signs up
        # first under it would own the account.
        problems.append(
            "ALLOWED_USERS is not used with AUTH=native (whoever signed up first under a "
            "listed name would get that account): leave it empty; admins approve sign-ups "
            "at /hub/authorize, or students use SIGNUP_CODE"
        )
    if len(admin_users) != 1:
        problems.append(
            f"ADMIN_USERS={','.join(sorted(admin_users))!r}: AUTH=native needs exactly one "
            "name, the first admin, whose account the hub creates at start-up (more admins "
            "are made on the admin page); `make env` fills it in"
        )
    for name in admin_users:
        if not _NATIVE_USERNAME.match(name):
            problems.append(
                f"ADMIN_USERS={name!r} is not a usable username: lowercase, no spaces, "
                "commas or slashes, at most 128 characters"
            )
    if not 16 <= len(admin_initial.encode()) <= 72:
        problems.append(
            "ADMIN_INITIAL_PASSWORD must be 16 to 72 bytes long (bcrypt reads 72): delete "
            "it from .env and run `make env` to generate one"
        )
    if signup_code and len(signup_code) < 12:
        problems.append(
            "SIGNUP_CODE is shorter than 12 characters: delete it from .env and run "
            "`make env` to generate one, or leave it empty so that an admin approves "
            "every sign-up"
        )
    if signup_code and signup_code == admin_initial:
        problems.append("SIGNUP_CODE and ADMIN_INITIAL_PASSWORD are equal: they must differ")


def _check_workshop(workshop_mode: str, problems: list[str]) -> None:
    """AUTH=shared-password is workshop mode: it only starts when asked for by name."""
    if workshop_mode not in ("true", "false"):
        problems.append(f"WORKSHOP_MODE={workshop_mode!r} is not valid: use true or false")
    elif workshop_mode != "true":
        problems.append(
            "AUTH=shared-password is workshop mode: anyone who knows SHARED_USER_PASSWORD "
            "can log in under any name, an existing student's too, and read their files, "
            "kernels and tokens. For a class use AUTH=native (each student their own "
            "password). To run a short workshop anyway, set WORKSHOP_MODE=true"
        )


def _check_oauth_identities(
    auth: str,
    oauth: OAuthSettings,
    admin_users: frozenset[str],
    allowed_users: frozenset[str],
    problems: list[str],
) -> None:
    """ADMIN_USERS must name one person at the provider, and the world is never allowed."""
    if auth == "github" and not (oauth.allowed_orgs or allowed_users):
        problems.append(
            "AUTH=github needs an allow-list, or every GitHub account could log in: set "
            "GITHUB_ALLOWED_ORGS=org or org:team, or ALLOWED_USERS=login1,login2"
        )
    if auth == "google" and not (oauth.hosted_domains or allowed_users):
        problems.append(
            "AUTH=google needs an allow-list, or every Google account could log in: set "
            "GOOGLE_HOSTED_DOMAINS=uni.edu, or ALLOWED_USERS=ann@uni.edu,..."
        )
    wants_email = auth in ("google", "cilogon") or (
        auth == "generic" and oauth.username_claim == "email"
    )
    for name in sorted(admin_users):
        if name.lower() in ROLE_NAMES:
            problems.append(
                f"ADMIN_USERS={name!r} names a role, not a person: with AUTH={auth} any "
                "account the provider calls that becomes admin. Name the person (their "
                f"{'e-mail' if wants_email else 'username at the provider'}) or use "
                "ADMIN_GROUPS (docs/oauth.md)"
            )
        elif wants_email and not _EMAIL.match(name):
            problems.append(
                f"ADMIN_USERS={name!r} is not an e-mail address: with AUTH={auth} usernames "
                "are e-mails, so name admins by their full address (ann@uni.edu) or use "
                "ADMIN_GROUPS"
            )


def _gpu_settings(env: Mapping[str, str], data_dir: str, problems: list[str]) -> dict[str, Any]:
    """GPU_PROFILES, GPU_DB, GPU_QUEUE, GPU_QUEUE_TIMEOUT and the GPU-hour quotas."""

    def get(name: str, default: str = "") -> str:
        return env.get(name, default).strip()

    out: dict[str, Any] = {}
    for name, key, default in (
        ("GPU_PROFILES", "gpu_profiles", ""),
        ("GPU_DB", "gpu_db", f"{data_dir}/gpu.sqlite"),
    ):
        value = get(name, default)
        if value and not value.startswith("/"):
            problems.append(
                f"{name}={value!r}: use an absolute path inside the hub container, "
                f"e.g. {'/srv/labhub/profiles.json' if key == 'gpu_profiles' else default}"
            )
        out[key] = value
    queue = get("GPU_QUEUE", "false").lower()
    if queue not in ("true", "false"):
        problems.append(f"GPU_QUEUE={queue!r} is not valid: use true or false")
    out["gpu_queue"] = queue == "true"
    timeout = get("GPU_QUEUE_TIMEOUT", "600")
    if not timeout.isdigit() or int(timeout) <= 0:
        problems.append(f"GPU_QUEUE_TIMEOUT={timeout!r} is not valid: seconds, e.g. 600")
    else:
        out["gpu_queue_timeout"] = int(timeout)
    user_hours = get("GPU_QUOTA_USER_HOURS")
    if user_hours:
        try:
            out["gpu_quota_user_hours"] = float(user_hours)
            if out["gpu_quota_user_hours"] <= 0:
                raise ValueError(user_hours)
        except ValueError:
            problems.append(
                f"GPU_QUOTA_USER_HOURS={user_hours!r} is not valid: GPU-hours per week "
                "such as 20, or empty for no per-user quota"
            )
    group_hours = get("GPU_QUOTA_GROUP_HOURS")
    if group_hours:
        hint = (
            f"GPU_QUOTA_GROUP_HOURS={group_hours!r} is not valid: a JSON object of group "
            'names to GPU-hours per week, e.g. {"students": 100}, or empty for none'
        )
        try:
            parsed = json.loads(group_hours)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0
            for v in parsed.values()
        ):
            problems.append(hint)
        else:
            out["gpu_quota_group_hours"] = {str(k): float(v) for k, v in parsed.items()}
    return out


def _ldap_settings(get: Callable[..., str], problems: list[str]) -> dict[str, Any]:
    """AUTH=ldap: LDAP_URL, LDAP_ALLOW_PLAINTEXT, how a login finds its entry, the groups.

    Passwords cross the network, so the directory is spoken to over TLS (ldaps://, or
    StartTLS on ldap://) checked against the system CAs and EXTRA_CA_FILE; plain LDAP
    only with LDAP_ALLOW_PLAINTEXT=true. ldap3 checks the certificate's DNS names only,
    so the URL names the host as its certificate does, never by IP address.
    """
    out: dict[str, Any] = {}
    url = get("LDAP_URL")
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("ldap", "ldaps")
        or not parts.hostname
        or port == -1
        or (parts.path not in ("", "/") or parts.query or parts.fragment or parts.username)
    ):
        problems.append(
            f"LDAP_URL={url!r} is not a directory address: use ldaps://ldap.uni.edu (TLS, "
            "port 636) or ldap://ldap.uni.edu (StartTLS, port 389), with :port if another"
        )
        return out
    plaintext = get("LDAP_ALLOW_PLAINTEXT", "false").lower()
    if plaintext not in ("true", "false"):
        problems.append(f"LDAP_ALLOW_PLAINTEXT={plaintext!r} is not valid: use true or false")
    elif plaintext == "true" and parts.scheme == "ldaps":
        problems.append(
            "LDAP_ALLOW_PLAINTEXT=true contradicts LDAP_URL=ldaps://...: TLS is on; "
            "set LDAP_ALLOW_PLAINTEXT=false"
        )
    tls = {"ldaps": "on_connect", "ldap": "before_bind"}[parts.scheme]
    if plaintext == "true":
        tls = "insecure"
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    if is_ip and tls != "insecure":
        problems.append(
            f"LDAP_URL={url!r} names the directory by IP address: the hub checks the "
            "directory's TLS certificate against its DNS names, so use the host name the "
            "certificate carries, e.g. ldaps://ldap.uni.edu"
        )
    out.update(
        ldap_url=url,
        ldap_host=host,
        ldap_port=port or (636 if tls == "on_connect" else 389),
        ldap_tls=tls,
    )

    template = get("LDAP_BIND_DN_TEMPLATE")
    search_base = get("LDAP_USER_SEARCH_BASE")
    search_user, search_password = get("LDAP_SEARCH_USER"), get("LDAP_SEARCH_PASSWORD")
    if bool(template) == bool(search_base):
        problems.append(
            "AUTH=ldap needs exactly one of LDAP_BIND_DN_TEMPLATE (the entry's DN with "
            "{username}, e.g. uid={username},ou=people,dc=uni,dc=edu) or LDAP_USER_SEARCH_BASE "
            "(search-then-bind, e.g. ou=people,dc=uni,dc=edu; Active Directory)"
        )
    rest = template.replace("{username}", "", 1)
    if template and (rest == template or "{" in rest or "}" in rest):
        problems.append(
            f"LDAP_BIND_DN_TEMPLATE={template!r} must hold {{username}} once and no other "
            "braces, e.g. uid={username},ou=people,dc=uni,dc=edu"
        )
    if bool(search_user) != bool(search_password):
        problems.append(
            "LDAP_SEARCH_USER and LDAP_SEARCH_PASSWORD go together: the DN and password of "
            "the account that searches for users (both empty: an anonymous search)"
        )
    if search_user and not search_base:
        problems.append("LDAP_SEARCH_USER is only used with LDAP_USER_SEARCH_BASE: set it too")
    attribute = get("LDAP_USERNAME_ATTRIBUTE", "uid")
    if not re.match(r"^[A-Za-z][A-Za-z0-9-]*$", attribute):
        problems.append(
            f"LDAP_USERNAME_ATTRIBUTE={attribute!r} is not an attribute name: uid (OpenLDAP) "
            "or sAMAccountName (Active Directory)"
        )
    group_base = get("LDAP_GROUP_SEARCH_BASE")
    if (get("ALLOWED_GROUPS") or get("ADMIN_GROUPS")) and not group_base:
        problems.append(
            "ALLOWED_GROUPS/ADMIN_GROUPS need LDAP_GROUP_SEARCH_BASE with AUTH=ldap: the "
            "directory entry the groups are under, e.g. ou=groups,dc=uni,dc=edu"
        )
    out.update(
        ldap_bind_dn_template=template,
        ldap_user_search_base=search_base,
        ldap_search_user=search_user,
        ldap_search_password=search_password,
        ldap_username_attribute=attribute,
        ldap_group_search_base=group_base,
    )
    return out


def _oauth_settings(
    auth: str, env: Mapping[str, str], domain: str, https_port: int, problems: list[str]
) -> OAuthSettings:
    def get(name: str, default: str = "") -> str:
        return env.get(name, default).strip()

    client_id, client_secret = get("OAUTH_CLIENT_ID"), get("OAUTH_CLIENT_SECRET")
    for name, value in (("OAUTH_CLIENT_ID", client_id), ("OAUTH_CLIENT_SECRET", client_secret)):
        if not value:
            problems.append(
                f"{name} is required with AUTH={auth}: register an OAuth app with the provider "
                "(docs/admin-guide.md#oauth) and copy its value here"
            )
    port = "" if https_port == 443 else f":{https_port}"
    # Empty (as `make env` writes it from .env.example) means the default.
    callback = get("OAUTH_CALLBACK_URL") or f"https://{domain}{port}/hub/oauth_callback"
    if not callback.startswith("https://"):
        problems.append(f"OAUTH_CALLBACK_URL={callback!r} must be an https:// URL")
    issuer = get("OIDC_ISSUER")
    if auth == "generic" and not issuer.startswith("https://"):
        problems.append(
            "OIDC_ISSUER is required with AUTH=generic and must be an https:// URL, e.g. "
            "https://keycloak.example.edu/realms/lab (its /.well-known/openid-configuration "
            "is read at start-up)"
        )
    if auth == "cilogon" and not get("CILOGON_IDP"):
        # OAuthenticator 17.4 admits only users whose `idp` claim is a configured IdP.
        problems.append(
            "CILOGON_IDP is required with AUTH=cilogon: the entity ID of your university's "
            "identity provider as CILogon lists it (https://cilogon.org/idplist/), e.g. "
            "https://idp.uni.edu/idp/shibboleth"
        )
    scopes = tuple(_split(get("OAUTH_SCOPES", "openid profile email")))
    claims_from = get("OIDC_CLAIMS_FROM") or "userinfo"
    if claims_from not in ("userinfo", "id_token"):
        problems.append(
            f"OIDC_CLAIMS_FROM={claims_from!r} is unknown: use userinfo (Keycloak and most "
            "providers) or id_token (Azure AD, whose userinfo has no username or groups)"
        )
    return OAuthSettings(
        client_id=client_id,
        client_secret=client_secret,
        callback_url=callback,
        allowed_orgs=_split(get("GITHUB_ALLOWED_ORGS")),
        hosted_domains=_split(get("GOOGLE_HOSTED_DOMAINS")),
        oidc_issuer=issuer.rstrip("/"),
        username_claim=get("OIDC_USERNAME_CLAIM", "preferred_username"),
        groups_claim=get("OIDC_GROUPS_CLAIM", "groups"),
        scopes=tuple(sorted(scopes)),
        cilogon_idp=get("CILOGON_IDP"),
        claims_from=claims_from,
    )


@dataclass(frozen=True)
class NetworkSettings:
    """The users' network and what its guard (`labhub.netguard`) lets user containers reach.

    Read by the netguard service only (compose passes it these variables and no secret).
    The address layout has no default here: compose needs the same literal values for
    the network and the static addresses, so they come from `.env` alone.
    """

    bridge: str
    subnet: ipaddress.IPv4Network
    ip_range: ipaddress.IPv4Network
    hub_ip: ipaddress.IPv4Address
    proxy_ip: ipaddress.IPv4Address
    lan_access: bool = False
    internet: bool = True
    egress_allow: tuple[ipaddress.IPv4Network, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NetworkSettings:
        """Read and check every network variable; raise one SettingsError with all problems."""
        problems: list[str] = []

        def required(name: str, example: str, parse: Callable[[str], T]) -> T | None:
            raw = env.get(name, "").strip()
            if not raw:
                problems.append(
                    f"{name} is missing: run `make env` (it adds it from .env.example), "
                    f"e.g. {name}={example}"
                )
                return None
            try:
                return parse(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not valid: write it like {name}={example}")
                return None

        def flag(name: str, default: str) -> bool:
            raw = env.get(name, "").strip().lower() or default
            if raw not in ("true", "false"):
                problems.append(f"{name}={raw!r} is not valid: use true or false")
            return raw == "true"

        bridge = env.get("USERS_BRIDGE", "").strip()
        if not _BRIDGE.match(bridge):
            problems.append(
                f"USERS_BRIDGE={bridge!r} is not a usable interface name: 1-15 letters, "
                "digits, - or _, e.g. USERS_BRIDGE=labhub-users"
            )
        subnet = required("USERS_SUBNET", "172.31.240.0/20", ipaddress.IPv4Network)
        ip_range = required("USERS_IP_RANGE", "172.31.248.0/21", ipaddress.IPv4Network)
        hub_ip = required("HUB_USERS_IP", "172.31.240.2", ipaddress.IPv4Address)
        proxy_ip = required("PROXY_USERS_IP", "172.31.240.3", ipaddress.IPv4Address)
        if subnet is not None:
            _check_layout(subnet, ip_range, hub_ip, proxy_ip, problems)

        egress_allow: list[ipaddress.IPv4Network] = []
        for item in sorted(_split(env.get("USER_EGRESS_ALLOW", ""))):
            try:
                egress_allow.append(ipaddress.IPv4Network(item))
            except ValueError:
                problems.append(
                    f"USER_EGRESS_ALLOW: {item!r} is not an IPv4 address or network: write "
                    "addresses or CIDRs separated by commas, e.g. 10.1.2.3,10.20.0.0/24"
                )
        lan_access = flag("USER_LAN_ACCESS", "false")
        internet = flag("USER_INTERNET", "true")
        if problems:
            raise SettingsError(problems)
        assert subnet and ip_range and hub_ip and proxy_ip
        return cls(
            bridge=bridge,
            subnet=subnet,
            ip_range=ip_range,
            hub_ip=hub_ip,
            proxy_ip=proxy_ip,
            lan_access=lan_access,
            internet=internet,
            egress_allow=tuple(egress_allow),
        )


def _check_layout(
    subnet: ipaddress.IPv4Network,
    ip_range: ipaddress.IPv4Network | None,
    hub_ip: ipaddress.IPv4Address | None,
    proxy_ip: ipaddress.IPv4Address | None,
    problems: list[str],
) -> None:
    """The users' subnet holds the range user containers get addresses from (Docker puts
    the host's gateway address at its start) and, outside it, the hub's and the proxy's
    fixed addresses: otherwise a user container could get the hub's address."""
    if subnet.prefixlen > 26:
        problems.append(f"USERS_SUBNET={subnet} is too small: use a /26 or larger, e.g. a /20")
    if ip_range is not None and not ip_range.subnet_of(subnet):
        problems.append(f"USERS_IP_RANGE={ip_range} must lie inside USERS_SUBNET={subnet}")
    for name, address in (("HUB_USERS_IP", hub_ip), ("PROXY_USERS_IP", proxy_ip)):
        if address is None:
            continue
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
            problems.append(
                f"{name}={address} must be a host address inside USERS_SUBNET={subnet}, "
                f"e.g. {subnet.network_address + 2}"
            )
        elif ip_range is not None and address in ip_range:
            problems.append(
                f"{name}={address} lies inside USERS_IP_RANGE={ip_range}, where user containers "
                "get their addresses: put it outside, e.g. at the start of USERS_SUBNET"
            )
    if hub_ip is not None and hub_ip == proxy_ip:
        problems.append(f"HUB_USERS_IP and PROXY_USERS_IP are both {hub_ip}: they must differ")
