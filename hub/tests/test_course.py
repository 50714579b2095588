"""Course links: the nbgitpuller link a student clicks, and the group announcement."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from labhub.course import (
    LINKS_KEY,
    MAX_LINKS,
    CourseLinkError,
    announcement,
    nbgitpuller_link,
    service_token,
    with_link,
    without_link,
)

pytestmark = pytest.mark.unit

HUB = "https://gpu.lab.example.edu"


def test_the_link_pulls_into_a_folder_named_after_the_repository_and_opens_the_file() -> None:
    link = nbgitpuller_link(
        HUB + "/", "https://gitlab.uni.edu/ml/course-2026.git", "term-1", "week 1/intro.ipynb"
    )
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == HUB + "/hub/user-redirect/git-pull"
    assert parse_qs(parts.query) == {
        "repo": ["https://gitlab.uni.edu/ml/course-2026.git"],
        "branch": ["term-1"],
        "targetpath": ["course-2026"],
        "urlpath": ["lab/tree/course-2026/week%201/intro.ipynb"],
    }


def test_without_a_file_the_link_opens_the_folder() -> None:
    query = parse_qs(urlsplit(nbgitpuller_link(HUB, "http://git.lan/course")).query)
    assert query["urlpath"] == ["lab/tree/course"] and query["branch"] == ["main"]


@pytest.mark.parametrize(
    ("repo", "branch", "open_path", "message"),
    [
        ("git@gitlab.uni.edu:ml/course.git", "main", "", r"is not an http\(s\) URL"),
        ("file:///srv/course", "main", "", r"is not an http\(s\) URL"),
        ("https://ann:secret@gitlab.uni.edu/c.git", "main", "", "carries credentials"),
        ("https://gitlab.uni.edu/", "main", "", "has no name in its path"),
        ("https://gitlab.uni.edu/c.git", "--upload-pack=x", "", "not a git branch name"),
        ("https://gitlab.uni.edu/c.git", "a..b", "", "not a git branch name"),
        ("https://gitlab.uni.edu/c.git", "main", "../../.ssh/id_rsa", "must be relative"),
        ("https://gitlab.uni.edu/c.git", "main", "/etc/passwd", "must be relative"),
    ],
    ids=["ssh", "file", "credentials", "no-name", "option", "dots", "escape", "absolute"],
)
def test_a_link_that_cannot_work_is_refused_with_the_reason(
    repo: str, branch: str, open_path: str, message: str
) -> None:
    with pytest.raises(CourseLinkError, match=message):
        nbgitpuller_link(HUB, repo, branch, open_path)


def test_a_pushed_link_comes_first_once_and_old_ones_drop_off() -> None:
    properties: dict[str, Any] = {"other": 1}
    for n in range(MAX_LINKS + 2):
        properties = with_link(properties, f"week {n}", f"{HUB}/{n}")
    properties = with_link(properties, "week 5 again", f"{HUB}/5")
    links = properties[LINKS_KEY]
    assert len(links) == MAX_LINKS and properties["other"] == 1
    assert links[0] == {"title": "week 5 again", "url": f"{HUB}/5"}
    assert [link["url"] for link in links].count(f"{HUB}/5") == 1
    assert f"{HUB}/0" not in [link["url"] for link in links]
    assert f"{HUB}/5" not in [
        link["url"] for link in without_link(properties, f"{HUB}/5")[LINKS_KEY]
    ]


@dataclass
class Group:
    name: str
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class User:
    groups: list[Group]


def test_members_see_their_groups_links_escaped_and_nobody_else_does() -> None:
    ml = Group("ml", with_link({}, "<script>alert(1)</script>", f"{HUB}/pull?a=1&b=2"))
    bad = Group("bad", {LINKS_KEY: [{"title": "x", "url": "javascript:alert(1)"}]})
    html = announcement(User([ml, bad, Group("empty")]))
    assert f'href="{HUB}/pull?a=1&amp;b=2"' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "javascript:" not in html
    assert announcement(User([Group("empty")])) == ""
    assert announcement(None) == ""


def test_the_service_token_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "course-links.token"
    token = service_token(path)
    assert len(token) == 64 and service_token(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
