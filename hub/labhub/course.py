"""Course material from git without image rebuilds: nbgitpuller links (docs/course.md).

A link like https://HUB/hub/user-redirect/git-pull?repo=...&branch=...&targetpath=...
&urlpath=... sends each student to their own server, where nbgitpuller (in the workspace
image) clones the repository into their home the first time and merges the instructor's
changes later, never overwriting the student's own edits.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape

# A branch name git accepts, without the forms that would read as options or paths.
_BRANCH = re.compile(r"^(?!-)(?!.*\.\.)[A-Za-z0-9._/-]{1,200}$")


class CourseLinkError(ValueError):
    """A link's repository, branch or file cannot make a working link; says which and why."""


def target_folder(repo: str) -> str:
    """The folder in the student's home: the repository's last path part, without .git."""
    name = urlsplit(repo).path.rstrip("/").rsplit("/", 1)[-1]
    return name.removesuffix(".git")


def nbgitpuller_link(hub_url: str, repo: str, branch: str = "main", open_path: str = "") -> str:
    """The link students click: pull `repo`'s `branch`, then open `open_path` in JupyterLab.

    `open_path` is relative to the repository (e.g. week1/intro.ipynb); empty opens its folder.
    """
    parts = urlsplit(repo)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise CourseLinkError(
            f"repository {repo!r} is not an http(s) URL: use the clone URL the git server "
            "shows for HTTPS, e.g. https://gitlab.uni.edu/course/ml-2026.git"
        )
    if parts.username or parts.password:
        raise CourseLinkError(
            f"repository {repo!r} carries credentials: links are seen by every student; "
            "make the repository readable without them (public or internal)"
        )
    folder = target_folder(repo)
    if not folder or folder in (".", ".."):
        raise CourseLinkError(f"repository {repo!r} has no name in its path to use as a folder")
    if not _BRANCH.match(branch):
        raise CourseLinkError(f"branch {branch!r} is not a git branch name, e.g. main")
    path = PurePosixPath(open_path)
    if path.is_absolute() or ".." in path.parts:
        raise CourseLinkError(
            f"file {open_path!r} must be relative to the repository, e.g. week1/intro.ipynb"
        )
    opened = "/".join(quote(part) for part in (folder, *path.parts) if part != ".")
    query = urlencode(
        {"repo": repo, "branch": branch, "targetpath": folder, "urlpath": f"lab/tree/{opened}"}
    )
    return f"{hub_url.rstrip('/')}/hub/user-redirect/git-pull?{query}"


# --- Links pushed to a JupyterHub group ---------------------------------------------------
# An instructor's links live in the group's own properties (JupyterHub's REST API stores
# them in the hub database), under this key; each member sees them on the hub's pages.
LINKS_KEY = "course_links"
# The newest links of a group shown; older ones drop off.
MAX_LINKS = 10
# The hub service whose token the `labhub course-link` command uses (docs/course.md).
SERVICE = "course-links"
SERVICE_SCOPES = ["groups"]
# Its token, in the hub's data volume (HUB_DATA_DIR), made at hub start-up.
TOKEN_FILE = "course-links.token"

_ANNOUNCEMENT = Environment(
    loader=PackageLoader("labhub", "templates"), autoescape=select_autoescape(["html"])
)


def with_link(properties: Mapping[str, Any], title: str, url: str) -> dict[str, Any]:
    """The group's properties with (title, url) first among its links, once, newest kept."""
    links = [link for link in properties.get(LINKS_KEY, []) if link.get("url") != url]
    return {**properties, LINKS_KEY: [{"title": title, "url": url}, *links][:MAX_LINKS]}


def without_link(properties: Mapping[str, Any], url: str) -> dict[str, Any]:
    """The group's properties with the link to `url` taken off."""
    links = [link for link in properties.get(LINKS_KEY, []) if link.get("url") != url]
    return {**properties, LINKS_KEY: links}


def announcement(user: Any) -> str:
    """The hub pages' announcement for `user` (None before login): their groups' links.

    JupyterHub calls this for every page it renders (`template_vars`), so a link pushed
    with `labhub course-link` shows at once, without a restart.
    """
    if user is None:
        return ""
    links = [
        (group.name, link)
        for group in sorted(getattr(user, "groups", []), key=lambda g: g.name)
        for link in (group.properties or {}).get(LINKS_KEY, [])
        if isinstance(link, dict) and str(link.get("url", "")).startswith(("https://", "http://"))
    ]
    if not links:
        return ""
    return _ANNOUNCEMENT.get_template("course-links.html").render(links=links)


def service_token(path: Path) -> str:
    """The course-links service's API token, made once (0600) in the hub's data volume."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_hex(32)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(token)
        return token
