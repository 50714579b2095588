"""One validated settings object, built once from the environment at hub start-up.

Each setting is described once, in the table `SECTIONS` below: its variable, default,
parser (which is also its check) and help text. `Settings.from_env` (and, for the users'
network, `NetworkSettings.from_env`) reads its variables through that table, then applies
the rules that tie several settings together, and raises one `SettingsError` listing every
problem, each naming the variable and the fix. `.env.example` and docs/settings.md are
generated from the same table (`make settings-docs`, see `labhub.settingsdoc`).

Only this module reads labhub's settings from the environment. Files the settings point
to are checked by `check_files`, in the hub, where they are mounted.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .contract import nfs_export
from .datasets import Dataset, DatasetsError, load_datasets
from .diskquota import DiskQuotas
from .registry import check_pinned, image_digests, registry_address

AUTH_CHOICES = ("native", "shared-password", "github", "google", "generic", "cilogon", "ldap")
OAUTH_CHOICES = ("github", "google", "generic", "cilogon")
ENGINE_CHOICES = ("docker", "swarm")
# Names of a role, not of a person: any provider may give them to anyone (on GitHub the
# account `admin` belongs to a stranger), so they never name an admin in OAuth modes.
ROLE_NAMES = frozenset({"admin", "administrator", "root", "superuser", "sysadmin", "jupyterhub"})
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
# NativeAuthenticator refuses these in a username; JupyterHub lowercases usernames.
_NATIVE_USERNAME = re.compile(r"^[^A-Z\s,/]{1,128}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

# Docker's units (b, k, m, g; powers of 1024), with a fraction allowed: 1.5G.
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# Linux interface names: at most 15 characters; these are also safe in iptables chain names.
_BRIDGE = re.compile(r"^[A-Za-z0-9_-]{1,15}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$"
)
_DOCKER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Parser = Callable[[str], Any]


class SettingsError(ValueError):
    """Raised with every problem found, one per line, each naming its variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"labhub cannot start: {len(problems)} setting(s) to fix in .env "
            f"(see .env.example):\n{lines}"
        )


# --- Parsers -----------------------------------------------------------------------------
# A parser turns a variable's text into its value, or raises ValueError with the rest of
# the sentence that starts "NAME='text' ": "is not valid: <what to write instead>".


def text(raw: str) -> str:
    return raw


def boolean(raw: str) -> bool:
    """The one grammar for switches: true or false, in any case."""
    if raw.lower() not in ("true", "false"):
        raise ValueError("is not valid: use true or false")
    return raw.lower() == "true"


def parse_memory(raw: str) -> int:
    """The one grammar for sizes, in bytes: 512M, 4G, 1.5g, 65536b (k, m, g are powers of
    1024). `.env` and profiles.json both use it."""
    match = _MEMORY.match(raw.strip())
    if not match:
        raise ValueError("is not valid: a size such as 2G or 512M (units b, k, m, g)")
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])


def memory_at_least(minimum: str, why: str) -> Parser:
    def parse(raw: str) -> int:
        size = parse_memory(raw)
        if size < parse_memory(minimum):
            raise ValueError(f"is below {minimum}: {why}")
        return size

    return parse


def integer(low: int, high: int | None, example: str) -> Parser:
    def parse(raw: str) -> int:
        if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
            raise ValueError(f"is not valid: {example}")
        return int(raw)

    return parse


# Shorter, and a kernel could be shut down between two cells a student runs.
MIN_KERNEL_IDLE_TIMEOUT = 10


def kernel_idle_timeout(raw: str) -> int:
    """Seconds a kernel may stay idle inside a user's server; 0 turns culling off."""
    if not raw.isdigit() or 0 < int(raw) < MIN_KERNEL_IDLE_TIMEOUT:
        raise ValueError(
            f"is not valid: seconds a kernel may stay idle before it is shut down, at least "
            f"{MIN_KERNEL_IDLE_TIMEOUT} (e.g. 1800), or 0 to keep idle kernels"
        )
    return int(raw)


def nonzero_size(raw: str) -> int:
    size = parse_memory(raw)
    if not size:
        raise ValueError("is not valid: a size such as 10G")
    return size


def size_map(raw: str) -> Mapping[str, int]:
    """A JSON object of names to sizes, e.g. {"staff": "50G"}; empty: none."""
    hint = 'is not valid: a JSON object of names to sizes, e.g. {"staff": "50G"}, or empty'
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        raise ValueError(hint) from None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise ValueError(hint)
    try:
        return {str(name): nonzero_size(size) for name, size in parsed.items()}
    except ValueError:
        raise ValueError(hint) from None


_QUOTA_ROOT = re.compile(r"(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)+")


def quota_root(raw: str) -> str:
    if raw and not _QUOTA_ROOT.fullmatch(raw):
        raise ValueError(
            "is not valid: use an absolute host folder on btrfs such as /srv/labhub-homes "
            "(no spaces, ':' or '..'), or leave it empty for no quotas"
        )
    return raw


def home_nfs(raw: str) -> str:
    if raw:
        nfs_export(raw)  # the Docker proxy checks HOME_NFS with the same function
    return raw


def login_service(raw: str) -> str:
    if len(raw) > 60:
        raise ValueError("is longer than 60 characters: use a short name")
    return raw


def ldap_attribute(raw: str) -> str:
    if not re.match(r"^[A-Za-z][A-Za-z0-9-]*$", raw):
        raise ValueError(
            "is not an attribute name: uid (OpenLDAP) or sAMAccountName (Active Directory)"
        )
    return raw


def positive_number(example: str) -> Parser:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if not value > 0 or value == float("inf"):
            raise ValueError(f"is not valid: {example}")
        return value

    return parse


def optional(parse: Parser) -> Parser:
    """Empty means None (no value), anything else goes through `parse`."""
    return lambda raw: parse(raw) if raw else None


def choice(options: Iterable[str], hint: str = "") -> Parser:
    allowed = tuple(options)

    def parse(raw: str) -> str:
        if raw not in allowed:
            raise ValueError(f"is unknown: {hint or 'choose one of ' + ', '.join(allowed)}")
        return raw

    return parse


def names(raw: str) -> frozenset[str]:
    """A list separated by commas or spaces."""
    return frozenset(item.strip() for item in re.split(r"[,\s]+", raw) if item.strip())


def sorted_names(raw: str) -> tuple[str, ...]:
    return tuple(sorted(names(raw)))


def secret(minimum: int, fix: str) -> Parser:
    def parse(raw: str) -> str:
        if len(raw) < minimum:
            raise ValueError(f"is missing or shorter than {minimum} characters: {fix}")
        return raw

    return parse


def absolute_path(example: str) -> Parser:
    """An absolute path, or empty."""

    def parse(raw: str) -> str:
        if raw and not raw.startswith("/"):
            raise ValueError(f"is not valid: use an absolute path, e.g. {example}")
        return raw

    return parse


def https_url(example: str) -> Parser:
    """An https:// URL (without a trailing slash), or empty."""

    def parse(raw: str) -> str:
        if raw and not raw.startswith("https://"):
            raise ValueError(f"is not valid: use an https:// URL, e.g. {example}")
        return raw.rstrip("/")

    return parse


def host_name(raw: str) -> str:
    if not _DOMAIN.match(raw):
        raise ValueError(
            "is not a host name: use the name students type, e.g. gpu.lab.example.edu "
            "(no scheme, no port)"
        )
    return raw


def ip_address(raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ValueError(
            "is not valid: an address of this host, e.g. 0.0.0.0 or 127.0.0.1"
        ) from None


def docker_name(raw: str) -> str:
    if not _DOCKER_NAME.match(raw):
        raise ValueError("is not a Docker network name: letters, digits, _ . -, e.g. labhub")
    return raw


def tagged_image(raw: str) -> str:
    if raw.endswith(":latest") or ":" not in raw.rsplit("/", 1)[-1]:
        raise ValueError(
            "needs an explicit tag (not :latest), e.g. labhub/workspace:0.1.0, so that "
            "every user runs the same image"
        )
    return raw


def tagged_images(raw: str) -> tuple[str, ...]:
    """Images separated by commas or spaces, each with an explicit tag; empty: none."""
    images = []
    for image in sorted(names(raw)):
        try:
            images.append(tagged_image(image))
        except ValueError as error:
            raise ValueError(f"holds {image!r}, which {error}") from None
    return tuple(images)


def gpu_inventory(raw: str) -> str:
    if raw not in ("none", "auto") and not raw.startswith("/"):
        raise ValueError(
            "is not valid: use none, auto, or an absolute path inside the hub container "
            "such as /srv/labhub/gpus.json"
        )
    return raw


def group_hours(raw: str) -> dict[str, float]:
    """A JSON object of group names to positive GPU-hours, or empty for none."""
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in parsed.values()
    ):
        raise ValueError(
            "is not valid: a JSON object of group names to GPU-hours per week, e.g. "
            '{"students": 100}, or empty for none'
        )
    return {str(k): float(v) for k, v in parsed.items()}


def bridge_name(raw: str) -> str:
    if not _BRIDGE.match(raw):
        raise ValueError(
            "is not a usable interface name: 1-15 letters, digits, - or _, e.g. labhub-users"
        )
    return raw


def ipv4_network(raw: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(raw)
    except ValueError:
        raise ValueError("is not valid: an IPv4 network such as 172.31.240.0/20") from None


def ipv4_address(raw: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(raw)
    except ValueError:
        raise ValueError("is not valid: an IPv4 address such as 172.31.240.2") from None


def ipv4_networks(raw: str) -> tuple[ipaddress.IPv4Network, ...]:
    out = []
    for item in sorted(names(raw)):
        try:
            out.append(ipaddress.IPv4Network(item))
        except ValueError:
            raise ValueError(
                f"is not valid: {item!r} is not an IPv4 address or network: write addresses "
                "or CIDRs separated by commas, e.g. 10.1.2.3,10.20.0.0/24"
            ) from None
    return tuple(out)


# --- The table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One variable of `.env`: the single description its parser, docs and example share."""

    name: str
    default: str
    parse: Parser
    help: str
    # The field of Settings / OAuthSettings / NetworkSettings it fills; None: read by
    # compose, nginx or make only (checked here all the same).
    attr: str | None = None
    # Never printed back in an error message.
    secret: bool = False
    # Filled in by `make env` (scripts/init-env.sh) when empty.
    generated: bool = False
    # No default: a missing value is a problem (compose needs the same literal value).
    required: bool = False


@dataclass(frozen=True)
class Section:
    title: str
    intro: str
    settings: tuple[Setting, ...]
    # Which class reads them: "hub" (Settings) or "netguard" (NetworkSettings).
    reader: str = "hub"
    # False: set by compose for the hub container (image-internal paths), not in `.env`.
    in_env_file: bool = True


_OIDC_EXAMPLE = "https://keycloak.example.edu/realms/lab"

SECTIONS: tuple[Section, ...] = (
    Section(
        "Where students reach the hub",
        "",
        (
            Setting(
                "DOMAIN",
                "localhost",
                host_name,
                "Host name students type (certificates are made for it): gpu.lab.example.edu",
                "domain",
            ),
            Setting(
                "LAN_ADDRESSES",
                "",
                text,
                "Extra names/addresses for the certificate, comma-separated (LAN IPs, aliases).",
            ),
            Setting(
                "HTTP_PORT",
                "80",
                integer(1, 65535, "a port number such as 80"),
                "Host port nginx publishes for HTTP, which only redirects to HTTPS.",
            ),
            Setting(
                "HTTPS_PORT",
                "443",
                integer(1, 65535, "a port number such as 443"),
                "Host port nginx publishes for HTTPS.",
                "https_port",
            ),
            Setting(
                "BIND_ADDRESS",
                "0.0.0.0",
                ip_address,
                "Host address to publish on (0.0.0.0 = every interface; 127.0.0.1 = this "
                "machine only).",
            ),
            Setting(
                "SUBDOMAINS",
                "false",
                boolean,
                "Per-user subdomains (alice.DOMAIN): the only reliable way to keep one user's "
                "pages from scripting another's or the hub (with false, a page a student serves "
                "runs on the hub's origin: docs/security.md). Needs a wildcard DNS record "
                "*.DOMAIN pointing here; the certificate from `make certs` already covers "
                "*.DOMAIN. DOMAIN must contain a dot.",
                "subdomains",
            ),
            Setting(
                "MAX_BODY_SIZE",
                "512m",
                text,
                "Largest file a user can save or upload through Jupyter (a notebook with big "
                "plots); every other request is limited to 1 MB. nginx's notation (512m, 1g).",
            ),
            Setting(
                "LOGIN_RATE_LIMIT",
                "30",
                integer(1, None, "attempts per minute, e.g. 30"),
                "Login attempts per minute from one address (login and sign-up forms, OAuth "
                'callback); as many at once, then 429 "Too many login attempts". Raise it if '
                "a whole class logs in at once from behind one NAT address.",
            ),
        ),
    ),
    Section(
        "Login",
        "",
        (
            Setting(
                "AUTH",
                "native",
                choice(AUTH_CHOICES),
                "native (default: each person their own account and password, kept in the "
                "hub's database, no external service), github, google, generic (any OpenID "
                "Connect provider: Keycloak, Azure AD, ...), cilogon, ldap (the campus "
                "directory, LDAP or Active Directory: docs/ldap.md), or shared-password "
                "(workshop mode, see WORKSHOP_MODE). docs/security.md#login compares them; "
                "docs/admin-guide.md sets them up.",
                "auth",
            ),
            Setting(
                "ADMIN_USERS",
                "",
                names,
                "Admins. native: the one first admin, whose account the hub creates at "
                "start-up (`make env` fills in a name; more admins are made on the admin "
                "page). OAuth modes: full identities (e-mails for google and cilogon), who "
                "must also pass the allow rules below; role names such as admin are refused; "
                "ADMIN_GROUPS is the better way.",
                "admin_users",
            ),
            Setting(
                "ALLOWED_USERS",
                "",
                names,
                "OAuth modes: usernames allowed to log in, besides the rules below. github "
                "and google refuse to start without an allow-list.",
                "allowed_users",
            ),
            Setting(
                "ALLOWED_GROUPS",
                "",
                names,
                "generic, cilogon and ldap: provider or directory groups allowed to log in.",
                "allowed_groups",
            ),
            Setting(
                "ADMIN_GROUPS",
                "",
                names,
                "generic, cilogon and ldap: provider or directory groups whose members are admins.",
                "admin_groups",
            ),
            Setting(
                "ADMIN_INITIAL_PASSWORD",
                "",
                text,
                "native: the first admin's password, generated by `make env` and printed "
                "once; used only to create the account, so change it at "
                "/hub/change-password after the first login.",
                "admin_initial_password",
                secret=True,
                generated=True,
            ),
            Setting(
                "SIGNUP_CODE",
                "",
                text,
                "native: class sign-up code, generated by `make env` and printed once. A new "
                "account made at /hub/signup with it works at once; without it, an admin "
                "approves the account at /hub/authorize. It never opens an existing account. "
                "Empty it to approve every sign-up.",
                "signup_code",
                secret=True,
                generated=True,
            ),
            Setting(
                "WORKSHOP_MODE",
                "false",
                boolean,
                "shared-password is WORKSHOP MODE: anyone with SHARED_USER_PASSWORD logs in "
                "under any name, an existing user's too, and reads their files. The hub "
                "refuses to start in it unless WORKSHOP_MODE=true.",
                "workshop_mode",
            ),
            Setting(
                "SHARED_ADMIN_PASSWORD",
                "",
                text,
                "shared-password: the admins' (ADMIN_USERS) password, 32+ characters; "
                "generated by `make env` and printed once.",
                "shared_admin_password",
                secret=True,
                generated=True,
            ),
            Setting(
                "SHARED_USER_PASSWORD",
                "",
                text,
                "shared-password: everyone else's password; generated by `make env` and "
                "printed once.",
                "shared_user_password",
                secret=True,
                generated=True,
            ),
            Setting(
                "OAUTH_CLIENT_ID",
                "",
                text,
                "OAuth modes: the app registered with the provider (docs/oauth.md).",
                "client_id",
            ),
            Setting(
                "OAUTH_CLIENT_SECRET",
                "",
                text,
                "OAuth modes: that app's secret.",
                "client_secret",
                secret=True,
            ),
            Setting(
                "OAUTH_CALLBACK_URL",
                "",
                https_url("https://gpu.lab.example.edu/hub/oauth_callback"),
                "OAuth modes: the callback URL registered with the provider. Empty: "
                "https://DOMAIN/hub/oauth_callback (with :HTTPS_PORT unless 443).",
                "callback_url",
            ),
            Setting(
                "OIDC_ISSUER",
                "",
                https_url(_OIDC_EXAMPLE),
                "generic (required): the issuer URL; endpoints come from its "
                "/.well-known/openid-configuration, read at hub start-up.",
                "oidc_issuer",
            ),
            Setting(
                "OIDC_USERNAME_CLAIM",
                "preferred_username",
                text,
                "generic: the claim that becomes the username (email: admins are named by e-mail).",
                "username_claim",
            ),
            Setting(
                "OIDC_GROUPS_CLAIM",
                "groups",
                text,
                "generic and cilogon: the claim that lists the user's groups.",
                "groups_claim",
            ),
            Setting(
                "OIDC_CLAIMS_FROM",
                "userinfo",
                choice(
                    ("userinfo", "id_token"),
                    "use userinfo (Keycloak and most providers) or id_token (Azure AD, whose "
                    "userinfo has no username or groups)",
                ),
                "generic: where those claims are read: userinfo (Keycloak, most providers) or "
                "id_token (Azure AD, whose userinfo endpoint returns neither username nor "
                "groups).",
                "claims_from",
            ),
            Setting(
                "OAUTH_SCOPES",
                "openid profile email",
                sorted_names,
                "generic: the scopes the hub asks for, separated by spaces.",
                "scopes",
            ),
            Setting(
                "EXTRA_CA_FILE",
                "",
                absolute_path("/etc/ssl/campus-ca.pem"),
                "A PEM file (absolute host path) of CA certificates the hub also trusts when "
                "it talks to the login provider, e.g. the campus CA that signed your "
                "Keycloak's certificate. Read at hub start-up, no image rebuild "
                "(certs/extra-ca/ is the build-time way). Empty: the system CAs and "
                "certs/extra-ca/ only. See docs/oauth.md.",
                "extra_ca_file",
            ),
            Setting(
                "GITHUB_ALLOWED_ORGS",
                "",
                names,
                "github: organisations (or org:team) allowed to log in.",
                "allowed_orgs",
            ),
            Setting(
                "GOOGLE_HOSTED_DOMAINS",
                "",
                names,
                "google: Workspace domains allowed to log in.",
                "hosted_domains",
            ),
            Setting(
                "CILOGON_IDP",
                "",
                text,
                "cilogon (required): the entity ID of the university's identity provider, as "
                "listed at https://cilogon.org/idplist/, e.g. https://idp.uni.edu/idp/shibboleth.",
                "cilogon_idp",
            ),
            Setting(
                "LOGIN_SERVICE",
                "",
                login_service,
                'OAuth modes: the login button\'s name, "Sign in with <LOGIN_SERVICE>" (e.g. '
                "University SSO). Empty: the provider's name (GitHub, Google, CILogon) or, for "
                "generic, its host.",
                "login_service",
            ),
        ),
    ),
    Section(
        "LDAP / Active Directory login (AUTH=ldap, docs/ldap.md)",
        "",
        (
            Setting(
                "LDAP_URL",
                "",
                text,
                "The directory: ldaps://host (TLS, port 636) or ldap://host (StartTLS, port "
                "389), :port if another; the host name on its certificate (never an IP). The "
                "certificate is checked against the system CAs and EXTRA_CA_FILE.",
                "ldap_url",
            ),
            Setting(
                "LDAP_ALLOW_PLAINTEXT",
                "false",
                boolean,
                "true with ldap://...: plain LDAP, passwords readable on the wire.",
                "ldap_allow_plaintext",
            ),
            Setting(
                "LDAP_BIND_DN_TEMPLATE",
                "",
                text,
                "One of this or LDAP_USER_SEARCH_BASE: the user's DN with {username} "
                "(OpenLDAP), e.g. uid={username},ou=people,dc=uni,dc=edu.",
                "ldap_bind_dn_template",
            ),
            Setting(
                "LDAP_USER_SEARCH_BASE",
                "",
                text,
                "Search-then-bind (Active Directory): the base searched for the entry whose "
                "LDAP_USERNAME_ATTRIBUTE is the username, e.g. ou=people,dc=uni,dc=edu.",
                "ldap_user_search_base",
            ),
            Setting(
                "LDAP_SEARCH_USER",
                "",
                text,
                "The read-only service account's DN that searches (with LDAP_SEARCH_PASSWORD; "
                "both empty: an anonymous search).",
                "ldap_search_user",
            ),
            Setting(
                "LDAP_SEARCH_PASSWORD",
                "",
                text,
                "The service account's password.",
                "ldap_search_password",
                secret=True,
            ),
            Setting(
                "LDAP_USERNAME_ATTRIBUTE",
                "uid",
                ldap_attribute,
                "uid (OpenLDAP) or sAMAccountName (Active Directory).",
                "ldap_username_attribute",
            ),
            Setting(
                "LDAP_GROUP_SEARCH_BASE",
                "",
                text,
                "Where the groups are (e.g. ou=groups,dc=uni,dc=edu): each group listing the "
                "user (member/uniqueMember) becomes a hub group named by its cn, which "
                "ALLOWED_GROUPS, ADMIN_GROUPS, GPU profiles and quotas name. Needed for "
                "ALLOWED_GROUPS/ADMIN_GROUPS. No ALLOWED_GROUPS and no ALLOWED_USERS: every "
                "account in the directory may log in.",
                "ldap_group_search_base",
            ),
        ),
    ),
    Section(
        "User servers",
        "",
        (
            Setting(
                "USER_MEM_LIMIT",
                "4G",
                memory_at_least("256M", "JupyterLab alone needs about 150M"),
                "Memory limit per user server (512M, 4G).",
                "mem_limit",
            ),
            Setting(
                "USER_CPU_LIMIT",
                "2",
                positive_number("a number of CPUs such as 2 or 0.5"),
                "CPUs per user server (0.5, 2).",
                "cpu_limit",
            ),
            Setting(
                "USER_SHM_SIZE",
                "1G",
                parse_memory,
                "Size of /dev/shm per user server, for data loaders.",
                "shm_size",
            ),
            Setting(
                "USER_PIDS_LIMIT",
                "1024",
                integer(1, None, "a number such as 1024"),
                "Most processes per user server.",
                "pids_limit",
            ),
            Setting(
                "USER_TMP_SIZE",
                "1G",
                memory_at_least("16M", "pip and JupyterLab need room for temporary files"),
                "Size of /tmp per user server, a memory file system: its files count against "
                "the server's memory limit, so it is at most half of that limit. The rest of "
                "the container is read-only: /tmp and the home are all a student can write, "
                "and nobody fills the host's disk through /tmp "
                "(docs/security.md#the-writable-layer).",
                "tmp_size",
            ),
            Setting(
                "NAMED_SERVERS",
                "1",
                integer(0, 10, "how many named servers each user may have, 0 to 10"),
                "Named servers each user may have besides the default one, on the same home: "
                "keep a CPU server for editing and start a GPU server next to it only to train "
                "(docs/user-guide.md#edit-on-a-cpu-train-on-a-gpu). 0 turns them off.",
                "named_servers",
            ),
            Setting(
                "IDLE_TIMEOUT",
                "3600",
                integer(1, None, "seconds, e.g. 3600"),
                "Stop servers idle for this many seconds (GPU holders: GPU_IDLE_TIMEOUT).",
                "idle_timeout",
            ),
            Setting(
                "KERNEL_IDLE_TIMEOUT",
                "1800",
                kernel_idle_timeout,
                "Inside each server, shut down a kernel idle (no cell running) for this many "
                "seconds, at least 10; 0 keeps idle kernels. Frees its memory (and GPU memory) "
                "sooner than IDLE_TIMEOUT stops the whole server; files stay "
                "(docs/user-guide.md#idle-kernels).",
                "kernel_idle_timeout",
            ),
            Setting(
                "KERNEL_CULL_CONNECTED",
                "true",
                boolean,
                "true: an idle kernel is shut down even with its notebook tab open (an open tab "
                "otherwise keeps its memory for days); false spares kernels with a tab open.",
                "kernel_cull_connected",
            ),
            Setting(
                "CONCURRENT_SPAWN_LIMIT",
                "40",
                integer(1, None, "a number such as 40"),
                "Most spawns in flight at once; set above the largest class that logs in together.",
                "concurrent_spawn_limit",
            ),
            Setting(
                "DOCKER_NETWORK",
                "labhub",
                docker_name,
                "Docker network shared by the hub and user containers.",
                "docker_network",
            ),
            Setting(
                "ENGINE",
                "docker",
                choice(ENGINE_CHOICES),
                "docker: everything on this one Docker host. swarm: `make up` on a Swarm "
                "manager, each user's server a Swarm service on a node; GPUs are declared "
                "per node there, not detected (docs/scale-out.md).",
                "engine",
            ),
            Setting(
                "NODE_DOCKER_SOCKET",
                "/var/run/docker.sock",
                absolute_path("/var/run/docker.sock"),
                "ENGINE=swarm: each node's engine socket, which `make up` gives that node's "
                "Docker proxy (home moves, docs/scale-out.md); may name the node as Swarm "
                "templates do, e.g. /run/engines/{{.Node.ID}}.sock.",
                "node_docker_socket",
            ),
            Setting(
                "HOME_NFS",
                "",
                home_nfs,
                "ENGINE=swarm: the NFS export holding every user's home, as <server>:/path "
                "(a host name, IPv4 or [IPv6] address), e.g. nfs.lab.example.edu:/export/homes. "
                "Each home is the folder <path>/<home volume name> there, which must exist; "
                "every node needs an NFS client, and servers run on any node (no home node, "
                "no move-home; back up the export on the server). Empty: homes are Docker "
                "volumes on the node of each user's first spawn (docs/scale-out.md).",
                "home_nfs",
            ),
        ),
    ),
    Section(
        "The users' network",
        "docs/security.md#the-users-network. Its bridge and subnet: pick a subnet that no "
        "network your students or the host need uses (campus LAN, VPN, other Docker "
        "networks). User containers get addresses from "
        "USERS_IP_RANGE; the hub and the proxy have fixed addresses outside it. Change the "
        "four addresses together; the netguard service checks they agree and names what is "
        "wrong.",
        (
            Setting(
                "USERS_BRIDGE",
                "labhub-users",
                bridge_name,
                "The bridge: a host interface name, at most 15 characters.",
                "bridge",
                required=True,
            ),
            Setting(
                "USERS_SUBNET",
                "172.31.240.0/20",
                ipv4_network,
                "The users' subnet (a /26 or larger).",
                "subnet",
                required=True,
            ),
            Setting(
                "USERS_IP_RANGE",
                "172.31.248.0/21",
                ipv4_network,
                "Inside the subnet: where user containers get addresses (Docker puts the "
                "host's gateway address at its start).",
                "ip_range",
                required=True,
            ),
            Setting(
                "HUB_USERS_IP",
                "172.31.240.2",
                ipv4_address,
                "The hub's fixed address in the subnet, outside USERS_IP_RANGE.",
                "hub_ip",
                required=True,
            ),
            Setting(
                "PROXY_USERS_IP",
                "172.31.240.3",
                ipv4_address,
                "The proxy's fixed address in the subnet, outside USERS_IP_RANGE.",
                "proxy_ip",
                required=True,
            ),
            Setting(
                "USER_LAN_ACCESS",
                "false",
                boolean,
                "Students never reach each other, the host, the proxy's API or the Docker "
                "proxy. Besides that: may user containers open connections to private-range "
                "addresses (10/8, 172.16/12, 192.168/16, 169.254/16, 100.64/10: the campus "
                "LAN, the host's other networks)?",
                "lan_access",
            ),
            Setting(
                "USER_INTERNET",
                "true",
                boolean,
                "May user containers open connections to the internet (pip install, datasets)? "
                "With ENGINE=swarm through the egress proxy (docs/scale-out.md).",
                "internet",
            ),
            Setting(
                "USER_EGRESS_ALLOW",
                "",
                ipv4_networks,
                "Private addresses or networks users may reach anyway (a campus package "
                "mirror, a licence server), comma-separated: 10.1.2.3,10.20.0.0/24. DNS to "
                "the host's name servers is always allowed.",
                "egress_allow",
            ),
            Setting(
                "EGRESS_SUBNET",
                "172.31.239.0/24",
                ipv4_network,
                "ENGINE=swarm: the egress proxy's own network on the manager (its way out); "
                "users never reach it, nor the manager through it. Outside USERS_SUBNET and "
                "the campus LAN.",
                "egress_subnet",
            ),
        ),
        reader="netguard",
    ),
    Section(
        "GPUs",
        "docs/gpus.md sets them up.",
        (
            Setting(
                "GPU_INVENTORY",
                "none",
                gpu_inventory,
                "none (CPU only), auto (nvidia-smi), or a JSON inventory path inside the hub "
                "container. A declared inventory goes in GPU_CONFIG_DIR: "
                "GPU_INVENTORY=/srv/labhub/gpus.json. docs/gpus.md explains the file "
                "(exclusive or shared devices, memory caps).",
                "gpu_inventory",
            ),
            Setting(
                "GPU_CONFIG_DIR",
                "",
                absolute_path("/etc/labhub/gpu"),
                "Host folder (absolute path) mounted read-only at /srv/labhub in the hub, "
                "holding gpus.json and profiles.json. Empty: nothing mounted.",
            ),
            Setting(
                "GPU_PROFILES",
                "",
                absolute_path("/srv/labhub/profiles.json"),
                "Spawn profiles file inside the hub (e.g. /srv/labhub/profiles.json): "
                "CPU/memory limits, GPUs and the JupyterHub groups allowed each. Empty: cpu, "
                "gpu-shared and gpu-1.",
                "gpu_profiles",
            ),
            Setting(
                "GPU_DB",
                "/srv/jupyterhub/gpu.sqlite",
                absolute_path("/srv/jupyterhub/gpu.sqlite"),
                "Allocation record, queue, quotas and audit log (SQLite); keep it on the hub "
                "data volume.",
                "gpu_db",
            ),
            Setting(
                "GPU_QUEUE",
                "false",
                boolean,
                "When no GPU is free: false refuses at once; true queues the spawn (first "
                "come, first served, position shown while it waits) for up to "
                "GPU_QUEUE_TIMEOUT seconds.",
                "gpu_queue",
            ),
            Setting(
                "GPU_QUEUE_TIMEOUT",
                "600",
                integer(1, None, "seconds, e.g. 600"),
                "Seconds a queued spawn waits before it is refused.",
                "gpu_queue_timeout",
            ),
            Setting(
                "GPU_QUOTA_USER_HOURS",
                "",
                optional(
                    positive_number("GPU-hours per week such as 20, or empty for no per-user quota")
                ),
                "Fair use, in GPU-hours per ISO week (a whole GPU for an hour = 1, a slice of "
                "a device shared by N = 1/N), per user. Empty: no quota. Admins top up or "
                "reset on /services/gpus/.",
                "gpu_quota_user_hours",
            ),
            Setting(
                "GPU_QUOTA_GROUP_HOURS",
                "",
                group_hours,
                'GPU-hours per ISO week per JupyterHub group, as JSON: {"students": 100}. '
                "Empty: none.",
                "gpu_quota_group_hours",
            ),
            Setting(
                "GPU_IDLE_TIMEOUT",
                "1800",
                integer(1, None, "seconds, e.g. 1800"),
                "Stop a GPU holder's server idle for this many seconds, sooner than IDLE_TIMEOUT.",
                "gpu_idle_timeout",
            ),
            Setting(
                "GPU_CULL_EVERY",
                "60",
                integer(1, None, "seconds, e.g. 60"),
                "How often, in seconds, the GPU service looks for idle GPU holders.",
                "gpu_cull_every",
            ),
            # Reclaiming GPUs (labhub.gpu.reclaim, docs/gpus.md#reclaim): all in seconds.
            Setting(
                "GPU_UTILISATION_IDLE_TIMEOUT",
                "1800",
                integer(0, None, "seconds, e.g. 1800, or 0 to turn the rule off"),
                "Stop a GPU holder whose devices showed no utilisation (NVML, nvidia-smi) for "
                "this many seconds, however fresh its hub activity; its files stay. 0: off. "
                "Off by itself on hosts without nvidia-smi.",
                "gpu_utilisation_idle_timeout",
            ),
            Setting(
                "GPU_UTILISATION_WARN",
                "300",
                integer(0, None, "seconds, e.g. 300"),
                "Seconds before a stop (idle GPU or session length) from which JupyterLab and "
                "the hub page warn the student.",
                "gpu_utilisation_warn",
            ),
            Setting(
                "GPU_SESSION_MAX",
                "28800",
                integer(0, None, "seconds, e.g. 28800 (8 hours), or 0 for no limit"),
                "Longest a server may hold a GPU before it is stopped (files kept), unless "
                "extended. 0: no limit.",
                "gpu_session_max",
            ),
            Setting(
                "GPU_SESSION_EXTENSION",
                "7200",
                integer(1, None, "seconds, e.g. 7200 (2 hours)"),
                "Seconds one extension adds to a GPU session (students extend from JupyterLab "
                "or the hub page).",
                "gpu_session_extension",
            ),
            Setting(
                "GPU_SESSION_EXTENSIONS",
                "2",
                integer(0, 100, "a whole number of extensions from 0 to 100, e.g. 2"),
                "How many times a student may extend one GPU session. 0: never.",
                "gpu_session_extensions",
            ),
        ),
    ),
    Section(
        "Shared datasets and disk quotas (docs/admin-guide.md#shared-datasets)",
        "",
        (
            Setting(
                "DATASETS",
                "",
                text,
                "Read-only datasets at /datasets/<name> in user servers: inline JSON, or the "
                "path of a JSON file in GPU_CONFIG_DIR (e.g. /srv/labhub/datasets.json). Each "
                "entry: name, source (an absolute host folder or a Docker volume), optional "
                "groups (JupyterHub groups; none = every user), e.g. "
                '[{"name": "mnist", "source": "/srv/datasets/mnist"}]. Empty: none. '
                "ENGINE=swarm: every node needs the folder (or volume) at the same path.",
                "datasets_source",
            ),
            Setting(
                "QUOTA_ROOT",
                "",
                quota_root,
                "Host folder on a btrfs filesystem with quotas on (`btrfs quota enable "
                "FOLDER`), e.g. /srv/labhub-homes: each user's home becomes a subvolume "
                "there, limited by the kernel (docs/admin-guide.md#disk-quotas). Empty: no "
                "quotas (homes are plain Docker volumes).",
                "quota_root",
            ),
            Setting(
                "DISK_QUOTA",
                "10G",
                nonzero_size,
                "Each home's limit with QUOTA_ROOT (sizes like 10G).",
                "disk_quota",
            ),
            Setting(
                "DISK_QUOTA_GROUPS",
                "",
                size_map,
                'Per JupyterHub group, as JSON: {"thesis": "50G"} (the largest of a user\'s '
                "groups counts). Empty: none.",
                "disk_quota_groups",
            ),
            Setting(
                "DISK_QUOTA_USERS",
                "",
                size_map,
                'Per user, as JSON: {"alice": "80G"} (wins over groups). Empty: none.',
                "disk_quota_users",
            ),
            Setting(
                "DISK_QUOTA_MAX",
                "1024G",
                nonzero_size,
                "The most the diskquota service grants one home, whatever the hub asks for.",
            ),
        ),
    ),
    Section(
        "Monitoring (docs/monitoring.md)",
        "",
        (
            Setting(
                "MONITORING",
                "false",
                boolean,
                "true: `make up` also runs Prometheus (compose profile monitoring), which "
                "scrapes the hub's /hub/metrics; its web UI and API answer on this host only, "
                "at http://127.0.0.1:PROMETHEUS_PORT.",
                "monitoring",
            ),
            Setting(
                "PROMETHEUS_PORT",
                "9090",
                integer(1, 65535, "a port number such as 9090"),
                "Loopback port of the Prometheus UI and API (MONITORING=true).",
            ),
            Setting(
                "PROMETHEUS_API_TOKEN",
                "",
                optional(secret(32, "run `make env` to generate one (openssl rand -hex 32)")),
                "The token that reads /hub/metrics (scope read:metrics, nothing else): "
                "Prometheus's, and a campus Prometheus's that scrapes "
                "https://DOMAIN/hub/metrics with it. Generated by `make env`; empty: only "
                "admins' tokens read the metrics.",
                "prometheus_api_token",
                secret=True,
                generated=True,
            ),
        ),
    ),
    Section(
        "Images and builds",
        "",
        (
            Setting(
                "LABHUB_VERSION",
                "0.1.0",
                text,
                "Version tag of the labhub images.",
                "labhub_version",
            ),
            Setting(
                "BASE_IMAGE",
                "debian:trixie-slim",
                text,
                "Base image of every Dockerfile; built offline with debootstrap if it cannot "
                "be pulled.",
            ),
            Setting(
                "TENSORFLOW_PACKAGE",
                "tensorflow[and-cuda]==2.21.0",
                text,
                "TensorFlow build in the workspace: tensorflow[and-cuda]==2.21.0 for GPU "
                "hosts, tensorflow-cpu==2.21.0 for CPU-only hosts.",
            ),
            Setting(
                "WORKSPACE_IMAGES",
                "",
                tagged_images,
                "More images for users' servers, besides the workspace image: the allow-list "
                'a spawn profile picks from (GPU_PROFILES, a profile\'s "image"), separated '
                "by commas, each with its tag, e.g. labhub/workspace-torch:0.1.0 (the PyTorch "
                "workspace, which `make build` then builds). The Docker proxy creates "
                "containers from these and the workspace image only. Empty: the workspace "
                "image only.",
                "workspace_images",
            ),
            Setting(
                "TORCH_PACKAGE",
                "torch==2.15.0",
                text,
                "PyTorch build in labhub/workspace-torch (built when WORKSPACE_IMAGES lists "
                "it). PyPI's Linux wheel brings CUDA and runs on CPU-only hosts too (PyPI has "
                "no CPU-only build for Linux x86-64).",
            ),
            Setting(
                "REGISTRY",
                "",
                registry_address,
                "ENGINE=swarm: the registry every node pulls the users' image from, "
                "host[:port][/path], e.g. registry.lab.example.edu:5000/labhub. `make push` "
                "pushes the workspace image there and records its digest (pushed-images.env); "
                "servers run that digest, never a tag. Empty: no registry (one host).",
                "registry",
            ),
            Setting(
                "REGISTRY_USERNAME",
                "",
                text,
                "ENGINE=swarm with REGISTRY: the account the nodes pull the lab's images "
                "with, for a registry that wants a login to pull (a campus registry's "
                "read-only robot account or deploy token), with REGISTRY_PASSWORD. `make push` "
                "uses your own `docker login` instead. Empty: the nodes pull anonymously.",
                "registry_username",
            ),
            Setting(
                "REGISTRY_PASSWORD",
                "",
                text,
                "REGISTRY_USERNAME's password or token. The Docker proxy and `make up` hand it "
                "to the node that pulls (`make z2jh-values` to the chart's pull secret); no "
                "user's server sees it.",
                "registry_password",
                secret=True,
            ),
            Setting(
                "IMAGE_DIGESTS",
                "",
                image_digests,
                "ENGINE=swarm with REGISTRY: each users' image by the digest `make push` "
                "recorded, <local tag>=<REGISTRY>/<name>@sha256:<digest>, comma separated. "
                "Written by `make push` to pushed-images.env, which `make up` reads: do not "
                "set it in .env. Empty: no registry.",
                "image_digests",
            ),
            Setting(
                "TRUST_HOST_CAS",
                "true",
                boolean,
                "Also trust the CAs this host's admin added (/usr/local/share/ca-certificates), "
                "for networks behind a TLS-inspecting proxy. Extra CAs can also go in "
                "certs/extra-ca/.",
            ),
        ),
    ),
    Section(
        "Secrets",
        "Generated by `make env`; keep .env private, mode 0600.",
        (
            Setting(
                "CONFIGPROXY_AUTH_TOKEN",
                "",
                secret(32, "run `make env` to generate one (openssl rand -hex 32)"),
                "The hub's token for the proxy's API.",
                "configproxy_auth_token",
                secret=True,
                generated=True,
            ),
            Setting(
                "HUB_DEBUG",
                "false",
                boolean,
                "true: the hub and the spawner log at DEBUG level.",
                "debug",
            ),
        ),
    ),
    Section(
        "Running several stacks on one host (the tests do)",
        "",
        (
            Setting(
                "STACK_NAME",
                "labhub",
                text,
                "Compose project and resource-name prefix.",
            ),
            Setting(
                "CERTS_DIR",
                "",
                text,
                "The folder holding <DOMAIN>.crt/.key. Empty: certs/.",
            ),
        ),
    ),
    Section(
        "Set by compose for the hub (not in .env)",
        "Paths and names inside the hub image; compose/docker-compose.yml sets them.",
        (
            Setting(
                "HUB_DATA_DIR",
                "/srv/jupyterhub",
                absolute_path("/srv/jupyterhub"),
                "The hub's data volume: its database, cookie secret and GPU record.",
                "data_dir",
            ),
            Setting(
                "EXTRA_CA_BUNDLE",
                "",
                text,
                "The image's system CA bundle (with certs/extra-ca/ from build time), which "
                "the hub's calls to the login provider trust.",
                "extra_ca_bundle",
            ),
            Setting(
                "WORKSPACE_IMAGE",
                "labhub/workspace:0.1.0",
                tagged_image,
                "The users' image: labhub/workspace:LABHUB_VERSION.",
                "workspace_image",
            ),
            Setting(
                "HUB_CONTAINER",
                "",
                optional(docker_name),
                "ENGINE=swarm: the hub's container name (compose/swarm.yml): users' servers "
                "reach the hub by it, and the spawner connects it to their networks.",
                "hub_container",
            ),
            Setting(
                "CHP_CONTAINER",
                "",
                optional(docker_name),
                "ENGINE=swarm: configurable-http-proxy's container name (compose/swarm.yml), "
                "which the spawner connects to users' networks too.",
                "chp_container",
            ),
            Setting(
                "EGRESS_CONTAINER",
                "",
                optional(docker_name),
                "ENGINE=swarm: the egress proxy's container name (compose/swarm.yml): joined "
                "to users' networks like the hub, their servers' HTTP(S) proxy.",
                "egress_container",
            ),
            Setting(
                "NODE_PROXY_SERVICE",
                "",
                optional(docker_name),
                "ENGINE=swarm: the Swarm service of the nodes' Docker proxies (compose/swarm.yml), "
                "found by `labhub move-home` at tasks.<it>.",
                "node_proxy_service",
            ),
        ),
        in_env_file=False,
    ),
)


def _settings_of(reader: str) -> tuple[Setting, ...]:
    return tuple(s for section in SECTIONS if section.reader == reader for s in section.settings)


def settings_environment(env: Mapping[str, str]) -> dict[str, str]:
    """Every variable Settings reads, as text, defaults filled in: the environment from
    which another process (the GPU service) builds the same Settings, and nothing else."""
    return {s.name: env.get(s.name, "").strip() or s.default for s in _settings_of("hub")}


def _read(table: Iterable[Setting], env: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """Parse every variable of `table` (empty means the default); a value that does not
    parse becomes a problem and stays out of the result."""
    values: dict[str, Any] = {}
    for setting in table:
        raw = env.get(setting.name, "").strip()
        if not raw and setting.required:
            problems.append(
                f"{setting.name} is missing: run `make env` (it adds it from .env.example), "
                f"e.g. {setting.name}={setting.default}"
            )
            continue
        raw = raw or setting.default
        try:
            value = setting.parse(raw)
        except ValueError as error:
            shown = "" if setting.secret else f"={raw!r}"
            problems.append(f"{setting.name}{shown} {error}")
            continue
        if setting.attr:
            values[setting.attr] = value
    return values


def _pick(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    return {f.name: values[f.name] for f in fields(cls)}


@dataclass(frozen=True)
class OAuthSettings:
    """What every OAuth provider needs, plus the provider-specific knobs."""

    client_id: str
    client_secret: str
    callback_url: str
    allowed_orgs: frozenset[str]
    hosted_domains: frozenset[str]
    oidc_issuer: str
    username_claim: str
    groups_claim: str
    scopes: tuple[str, ...]
    cilogon_idp: str
    # generic: where the username and groups claims are read (userinfo or id_token).
    claims_from: str


@dataclass(frozen=True)
class Settings:
    """Everything the hub needs, validated. Each field's variable, default and help are
    in `SECTIONS`."""

    domain: str
    https_port: int
    subdomains: bool
    auth: str
    admin_users: frozenset[str]
    allowed_users: frozenset[str]
    allowed_groups: frozenset[str]
    admin_groups: frozenset[str]
    # native: the first admin's password (creates the account once) and the class code.
    admin_initial_password: str
    signup_code: str
    workshop_mode: bool
    shared_admin_password: str
    shared_user_password: str
    # Set for every OAuth provider, None otherwise.
    oauth: OAuthSettings | None
    # EXTRA_CA_FILE, as the hub sees it: a PEM file mounted at run time (compose).
    extra_ca_file: str
    mem_limit: int
    cpu_limit: float
    shm_size: int
    pids_limit: int
    tmp_size: int
    # Named servers per user besides the default one (0: off).
    named_servers: int
    idle_timeout: int
    # OAuth modes: the login button's "Sign in with ..." name (LOGIN_SERVICE).
    login_service: str
    # AUTH=ldap (_check_ldap): the directory, how a login finds its entry, its groups.
    ldap_url: str
    ldap_host: str
    ldap_port: int
    # ldapauthenticator's tls_strategy: before_bind (StartTLS), on_connect (ldaps) or insecure.
    ldap_tls: str
    ldap_bind_dn_template: str
    ldap_user_search_base: str
    ldap_search_user: str
    ldap_search_password: str
    ldap_username_attribute: str
    ldap_group_search_base: str
    # DATASETS (labhub.datasets): read-only mounts under /datasets, per group.
    datasets: tuple[Dataset, ...]
    # QUOTA_ROOT and the DISK_QUOTA* limits; root "" means quotas are off.
    disk_quotas: DiskQuotas
    # Kernel culling inside each user's server (0: off).
    kernel_idle_timeout: int
    kernel_cull_connected: bool
    concurrent_spawn_limit: int
    docker_network: str
    # ENGINE: "docker" (one host); "swarm": users' servers as Swarm services (_check_engine).
    engine: str
    # ENGINE=swarm: the socket each node's Docker proxy holds (a Swarm mount template).
    node_docker_socket: str
    # HOME_NFS (ENGINE=swarm): <server>:/export of the homes; "" homes on the nodes.
    home_nfs: str
    gpu_inventory: str
    gpu_profiles: str
    gpu_db: str
    gpu_queue: bool
    gpu_queue_timeout: int
    gpu_quota_user_hours: float | None
    gpu_quota_group_hours: Mapping[str, float]
    gpu_idle_timeout: int
    gpu_cull_every: int
    gpu_utilisation_idle_timeout: int
    gpu_utilisation_warn: int
    gpu_session_max: int
    gpu_session_extension: int
    gpu_session_extensions: int
    configproxy_auth_token: str
    # The hub's "prometheus" service token (read:metrics only); "" = no such service.
    prometheus_api_token: str | None
    debug: bool
    data_dir: str
    extra_ca_bundle: str
    labhub_version: str
    workspace_image: str
    # WORKSPACE_IMAGES: the other images profiles may name (see allowed_images).
    workspace_images: tuple[str, ...]
    # REGISTRY (labhub.registry): where Swarm nodes pull the workspace image by digest.
    registry: str
    # IMAGE_DIGESTS (make push): each allowed image's digest reference in REGISTRY.
    image_digests: Mapping[str, str]
    # The nodes' pull login for REGISTRY (the Docker proxy's; z2jh-values' pull secret).
    registry_username: str
    registry_password: str
    # ENGINE=swarm: the containers that reach users' servers, by name (compose/swarm.yml).
    hub_container: str | None
    chp_container: str | None
    egress_container: str | None
    # ENGINE=swarm: the nodes' Docker proxies' service (labhub.homemove finds its tasks).
    node_proxy_service: str | None

    @property
    def allowed_images(self) -> tuple[str, ...]:
        """Every image a user's server may run: the workspace image, then WORKSPACE_IMAGES."""
        return tuple(dict.fromkeys((self.workspace_image, *self.workspace_images)))

    def pinned_image(self, image: str) -> str:
        """The reference a server of `image` runs: its digest reference from `make push`
        (IMAGE_DIGESTS, Swarm mode with REGISTRY), else `image` itself."""
        return self.image_digests.get(image, image)

    @property
    def hub_image(self) -> str:
        """The hub image (compose's, by tag): what the Swarm nodes' Docker proxies run."""
        return f"labhub/hub:{self.labhub_version}"

    @property
    def copy_helper_image(self) -> str:
        """The image of the copy helpers that read and write homes on Swarm nodes: the node
        proxies' own, the one image every node runs (pulled by digest with REGISTRY), so it
        is there on a node where no user's image ever was."""
        return self.pinned_image(self.hub_image)

    @property
    def gpu_service(self) -> bool:
        """Whether the `gpus` service runs: for GPUs (GPU_INVENTORY), and for the students'
        home usage in its api/me (QUOTA_ROOT) on a hub without GPUs too."""
        return self.gpu_inventory != "none" or bool(self.disk_quotas.root)

    @property
    def public_url(self) -> str:
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return f"https://{self.domain}{port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and check every variable, then the rules between them; raise one
        SettingsError with all problems."""
        problems: list[str] = []
        values = _read(_settings_of("hub"), env, problems)
        auth = values.get("auth")
        if auth == "native":
            _check_native(values, problems)
        if auth == "shared-password":
            _check_workshop(values, problems)
        values["oauth"] = None
        if auth in OAUTH_CHOICES:
            _check_oauth(auth, values, problems)
            _check_oauth_identities(auth, values, problems)
            values["oauth"] = _oauth_settings(values)
        if values.get("login_service") and auth not in OAUTH_CHOICES:
            problems.append(
                f"LOGIN_SERVICE={values['login_service']!r} names the button of an OAuth "
                f"login; AUTH={auth} shows a username and password form: leave it empty"
            )
        values.update(ldap_host="", ldap_port=0, ldap_tls="")
        if auth == "ldap":
            _check_ldap(values, problems)
        _storage(values, problems)
        _check_gpu_reclaim(values, problems)

        _check_engine(values, problems)
        _check_registry(values, problems)
        if values.get("monitoring") and not values.get("prometheus_api_token"):
            problems.append(
                "MONITORING=true needs PROMETHEUS_API_TOKEN, the token Prometheus reads the "
                "hub's metrics with: run `make env` to generate it"
            )
        if values.get("subdomains") and "." not in values.get("domain", "."):
            problems.append(
                f"SUBDOMAINS=true needs a DOMAIN with a dot, not {values['domain']!r}: user "
                "servers live at <user>.DOMAIN, e.g. DOMAIN=hub.lab.example.edu with DNS "
                "*.hub.lab..."
            )
        if problems:
            raise SettingsError(problems)
        return cls(**_pick(cls, values))


def _check_gpu_reclaim(values: Mapping[str, Any], problems: list[str]) -> None:
    """A warning window as long as the rule it warns about would warn from the start."""
    warn = values.get("gpu_utilisation_warn")
    for name, attr in (
        ("GPU_UTILISATION_IDLE_TIMEOUT", "gpu_utilisation_idle_timeout"),
        ("GPU_SESSION_MAX", "gpu_session_max"),
    ):
        limit = values.get(attr)
        if warn is not None and limit and warn >= limit:
            problems.append(
                f"GPU_UTILISATION_WARN={warn} is not shorter than {name}={limit}: a student "
                f"would be warned from the start; make it smaller, e.g. {limit // 6}"
            )


def _check_engine(values: Mapping[str, Any], problems: list[str]) -> None:
    """ENGINE=swarm: `make up` runs the platform on a Swarm manager (compose/swarm.yml);
    a combination without a meaning there is refused by name, never silently dropped."""
    if values.get("engine") != "swarm":
        if values.get("home_nfs"):
            problems.append(
                "HOME_NFS is only for ENGINE=swarm: on one host the homes are Docker volumes "
                "on that host (leave HOME_NFS empty, or set ENGINE=swarm)"
            )
        return
    if values.get("quota_root") and values.get("home_nfs"):
        problems.append(
            "QUOTA_ROOT and HOME_NFS are both set: with HOME_NFS the homes are folders on the "
            "NFS server, where the nodes' btrfs quotas cannot reach (limit them on the server); "
            "leave one empty"
        )
    _check_swarm_gpu_db(values, problems)


def _check_swarm_gpu_db(values: Mapping[str, Any], problems: list[str]) -> None:
    """ENGINE=swarm with GPUs: the Docker proxy checks each GPU service against the record,
    through a read-only mount of the hub's data volume (compose/swarm.yml): it must be there."""
    gpu_db, data_dir = values.get("gpu_db", ""), values.get("data_dir", "")
    in_volume = Path(data_dir) in Path(gpu_db).parents
    if values.get("gpu_inventory", "none") != "none" and not in_volume:
        problems.append(
            f"GPU_DB={gpu_db}: with ENGINE=swarm and GPUs the record must be in the hub's data "
            f"volume ({data_dir}), which the Docker proxy reads: leave GPU_DB unset or put it "
            f"under {data_dir}"
        )


def _check_registry(values: Mapping[str, Any], problems: list[str]) -> None:
    """ENGINE=swarm with REGISTRY: every users' image (the workspace image, WORKSPACE_IMAGES)
    runs as that registry's digest reference, recorded by `make push` (IMAGE_DIGESTS)."""
    registry, digests = values.get("registry"), values.get("image_digests") or {}
    login = [values.get("registry_username"), values.get("registry_password")]
    if any(login) and not all(login):
        problems.append(
            "REGISTRY_USERNAME and REGISTRY_PASSWORD go together: set both (the registry's "
            "pull account and its password or token) or neither (anonymous pulls)"
        )
    if values.get("engine") != "swarm" or not registry:
        if digests:
            problems.append(
                "IMAGE_DIGESTS is only for ENGINE=swarm with REGISTRY (make push records it): "
                "leave it empty"
            )
        if any(login):
            problems.append(
                "REGISTRY_USERNAME and REGISTRY_PASSWORD are only for ENGINE=swarm with "
                "REGISTRY, the nodes' pull login: leave them empty"
            )
        return
    images = [("WORKSPACE_IMAGE", values.get("workspace_image"))]
    images += [("WORKSPACE_IMAGES", image) for image in values.get("workspace_images") or ()]
    # The nodes' Docker proxies run the hub image, pulled as the users' images are.
    images += [("LABHUB_VERSION", f"labhub/hub:{values.get('labhub_version')}")]
    for name, image in images:
        if image:
            try:
                check_pinned(registry, digests.get(image, image))
            except ValueError as error:
                problems.append(f"{name}={error}")


def _check_ldap(values: dict[str, Any], problems: list[str]) -> None:
    """AUTH=ldap: the directory's address and TLS, how a login finds its entry, the groups.

    Passwords cross the network, so the directory is spoken to over TLS (ldaps://, or
    StartTLS on ldap://) checked against the system CAs and EXTRA_CA_FILE; plain LDAP
    only with LDAP_ALLOW_PLAINTEXT=true. ldap3 checks the certificate's DNS names only,
    so the URL names the host as its certificate does, never by IP address.
    """
    url: str = values.get("ldap_url", "")
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
    else:
        plaintext = values.get("ldap_allow_plaintext", False)
        if plaintext and parts.scheme == "ldaps":
            problems.append(
                "LDAP_ALLOW_PLAINTEXT=true contradicts LDAP_URL=ldaps://...: TLS is on; "
                "set LDAP_ALLOW_PLAINTEXT=false"
            )
        tls = {"ldaps": "on_connect", "ldap": "before_bind"}[parts.scheme]
        if plaintext:
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
        values.update(
            ldap_host=host, ldap_port=port or (636 if tls == "on_connect" else 389), ldap_tls=tls
        )
    template: str = values.get("ldap_bind_dn_template", "")
    search_base: str = values.get("ldap_user_search_base", "")
    search_user: str = values.get("ldap_search_user", "")
    search_password: str = values.get("ldap_search_password", "")
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
    groups = values.get("allowed_groups") or values.get("admin_groups")
    if groups and not values.get("ldap_group_search_base"):
        problems.append(
            "ALLOWED_GROUPS/ADMIN_GROUPS need LDAP_GROUP_SEARCH_BASE with AUTH=ldap: the "
            "directory entry the groups are under, e.g. ou=groups,dc=uni,dc=edu"
        )


def _storage(values: dict[str, Any], problems: list[str]) -> None:
    """DATASETS needs the stack's network (named volumes are per stack); the quota settings
    become one DiskQuotas (off when QUOTA_ROOT is empty)."""
    try:
        values["datasets"] = load_datasets(
            values.get("datasets_source", ""), values.get("docker_network", "labhub")
        )
    except DatasetsError as error:
        problems.append(str(error))
    values["disk_quotas"] = DiskQuotas(
        root=values.get("quota_root", ""),
        default=values.get("disk_quota", 0),
        groups=values.get("disk_quota_groups", {}),
        users=values.get("disk_quota_users", {}),
    )


def _check_native(values: Mapping[str, Any], problems: list[str]) -> None:
    """AUTH=native: one first admin, created at start-up with a generated password."""
    admin_users: frozenset[str] = values.get("admin_users", frozenset())
    admin_initial: str = values.get("admin_initial_password", "")
    signup_code: str = values.get("signup_code", "")
    if values.get("allowed_users"):
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


def _check_workshop(values: Mapping[str, Any], problems: list[str]) -> None:
    """AUTH=shared-password is workshop mode: it only starts when asked for by name."""
    shared_user: str = values.get("shared_user_password", "")
    shared_admin: str = values.get("shared_admin_password", "")
    if values.get("workshop_mode") is False:
        problems.append(
            "AUTH=shared-password is workshop mode: anyone who knows SHARED_USER_PASSWORD "
            "can log in under any name, an existing student's too, and read their files, "
            "kernels and tokens. For a class use AUTH=native (each student their own "
            "password). To run a short workshop anyway, set WORKSHOP_MODE=true"
        )
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
    if shared_admin and not values.get("admin_users"):
        problems.append(
            "SHARED_ADMIN_PASSWORD is set but ADMIN_USERS is empty: "
            "name the admin, e.g. ADMIN_USERS=teacher"
        )
    if shared_admin and shared_admin == shared_user:
        problems.append(
            "SHARED_ADMIN_PASSWORD and SHARED_USER_PASSWORD are equal: they must differ"
        )


def _check_oauth(auth: str, values: Mapping[str, Any], problems: list[str]) -> None:
    """Each provider's required settings, its allow-list, and the groups it can send."""
    for name, attr in (("OAUTH_CLIENT_ID", "client_id"), ("OAUTH_CLIENT_SECRET", "client_secret")):
        if not values.get(attr):
            problems.append(
                f"{name} is required with AUTH={auth}: register an OAuth app with the provider "
                "(docs/admin-guide.md#oauth) and copy its value here"
            )
    if auth == "generic" and values.get("oidc_issuer") == "":
        problems.append(
            "OIDC_ISSUER is required with AUTH=generic and must be an https:// URL, e.g. "
            f"{_OIDC_EXAMPLE} (its /.well-known/openid-configuration is read at start-up)"
        )
    if auth == "cilogon" and not values.get("cilogon_idp"):
        # OAuthenticator 17.4 admits only users whose `idp` claim is a configured IdP.
        problems.append(
            "CILOGON_IDP is required with AUTH=cilogon: the entity ID of your university's "
            "identity provider as CILogon lists it (https://cilogon.org/idplist/), e.g. "
            "https://idp.uni.edu/idp/shibboleth"
        )
    allowed_users = values.get("allowed_users")
    if auth == "github" and not (values.get("allowed_orgs") or allowed_users):
        problems.append(
            "AUTH=github needs an allow-list, or every GitHub account could log in: set "
            "GITHUB_ALLOWED_ORGS=org or org:team, or ALLOWED_USERS=login1,login2"
        )
    if auth == "google" and not (values.get("hosted_domains") or allowed_users):
        problems.append(
            "AUTH=google needs an allow-list, or every Google account could log in: set "
            "GOOGLE_HOSTED_DOMAINS=uni.edu, or ALLOWED_USERS=ann@uni.edu,..."
        )
    groups = values.get("allowed_groups") or values.get("admin_groups")
    if auth == "github" and groups:
        problems.append(
            "ALLOWED_GROUPS/ADMIN_GROUPS are not used with AUTH=github: use "
            "GITHUB_ALLOWED_ORGS=org or org:team, and ADMIN_USERS"
        )
    if auth == "google" and groups:
        # Google sends no groups claim; its groups need a Workspace service account.
        problems.append(
            "ALLOWED_GROUPS/ADMIN_GROUPS are not used with AUTH=google (Google sends no "
            "groups claim): use GOOGLE_HOSTED_DOMAINS, ALLOWED_USERS and ADMIN_USERS"
        )


def _check_oauth_identities(auth: str, values: Mapping[str, Any], problems: list[str]) -> None:
    """ADMIN_USERS must name one person at the provider, never a role."""
    wants_email = auth in ("google", "cilogon") or (
        auth == "generic" and values.get("username_claim") == "email"
    )
    for name in sorted(values.get("admin_users", ())):
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


def _oauth_settings(values: Mapping[str, Any]) -> OAuthSettings | None:
    """The OAuth fields, with the callback URL's default (only if they all parsed)."""
    if not all(f.name in values for f in fields(OAuthSettings)):
        return None
    callback = values["callback_url"]
    if not callback and "domain" in values and "https_port" in values:
        port = "" if values["https_port"] == 443 else f":{values['https_port']}"
        callback = f"https://{values['domain']}{port}/hub/oauth_callback"
    return OAuthSettings(**{**_pick(OAuthSettings, values), "callback_url": callback})


def check_files(settings: Settings) -> None:
    """Raise one SettingsError for every file a setting names that is missing or broken.

    Run in the hub at start-up, where the files are mounted (`check-settings` runs
    outside the hub's mounts and cannot see them). EXTRA_CA_FILE is a PEM file of CA
    certificates; compose mounts an empty file when it is unset.
    """
    problems: list[str] = []
    if settings.extra_ca_file:
        path = Path(settings.extra_ca_file)
        try:
            extra = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            problems.append(
                f"EXTRA_CA_FILE: cannot read {path} in the hub ({error}): give the absolute "
                "host path of a PEM file of CA certificates, or leave it empty"
            )
        else:
            if extra.strip() and PEM_CERTIFICATE not in extra:
                problems.append(
                    f"EXTRA_CA_FILE: {path} holds no PEM certificate ({PEM_CERTIFICATE} ...)"
                )
    if problems:
        raise SettingsError(problems)


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
    lan_access: bool
    internet: bool
    egress_allow: tuple[ipaddress.IPv4Network, ...]
    egress_subnet: ipaddress.IPv4Network

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NetworkSettings:
        """Read and check every network variable; raise one SettingsError with all problems."""
        problems: list[str] = []
        values = _read(_settings_of("netguard"), env, problems)
        if "subnet" in values:
            _check_layout(values, problems)
        if problems:
            raise SettingsError(problems)
        return cls(**_pick(cls, values))


def _check_layout(values: Mapping[str, Any], problems: list[str]) -> None:
    """The users' subnet holds the range user containers get addresses from (Docker puts
    the host's gateway address at its start) and, outside it, the hub's and the proxy's
    fixed addresses: otherwise a user container could get the hub's address."""
    subnet: ipaddress.IPv4Network = values["subnet"]
    ip_range: ipaddress.IPv4Network | None = values.get("ip_range")
    hub_ip: ipaddress.IPv4Address | None = values.get("hub_ip")
    proxy_ip: ipaddress.IPv4Address | None = values.get("proxy_ip")
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
