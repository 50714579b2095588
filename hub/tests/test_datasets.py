"""DATASETS: what an admin may declare, and who gets which dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labhub.datasets import Dataset, DatasetsError, binds_for, load_datasets
from labhub.settings import Settings, SettingsError

from testsupport.minimal_env import MINIMAL_ENV

pytestmark = pytest.mark.unit

DECLARED = [
    {"name": "mnist", "source": "/srv/datasets/mnist"},
    {"name": "scans", "source": "lab-scans", "groups": ["radiology", "staff"]},
]


def test_inline_json_and_a_file_give_the_same_datasets(tmp_path: Path) -> None:
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps(DECLARED))
    inline = load_datasets(json.dumps(DECLARED), "labhub")
    assert load_datasets(str(path), "labhub") == inline
    assert inline == (
        Dataset("mnist", "/srv/datasets/mnist"),
        Dataset("scans", "lab-scans", frozenset({"radiology", "staff"})),
    )
    assert inline[1].bind == "lab-scans:/datasets/scans:ro"
    assert load_datasets("  ", "labhub") == ()


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ((), {"/srv/datasets/mnist": "/datasets/mnist"}),
        (("students",), {"/srv/datasets/mnist": "/datasets/mnist"}),
        (
            ("students", "staff"),
            {"/srv/datasets/mnist": "/datasets/mnist", "lab-scans": "/datasets/scans"},
        ),
    ],
    ids=["no-group", "other-group", "one-of-its-groups"],
)
def test_a_dataset_with_groups_is_mounted_for_their_members_only(
    groups: tuple[str, ...], expected: dict[str, str]
) -> None:
    assert binds_for(load_datasets(json.dumps(DECLARED), "labhub"), groups) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "is not JSON"),
        ('{"name": "x"}', "must be a JSON list"),
        ('["mnist"]', r"\[0\] must be an object"),
        ('[{"name": "x", "source": "/d", "mode": "rw"}]', "unknown key 'mode'"),
        ('[{"name": "X Y", "source": "/d"}]', "name 'X Y' must be"),
        ('[{"name": "x"}]', "source None must be"),
        ('[{"name": "x", "source": "relative/path"}]', "source 'relative/path' must be"),
        ('[{"name": "x", "source": "/srv/../etc"}]', "source '/srv/../etc' must be"),
        ('[{"name": "x", "source": "/srv/a:/etc"}]', "must be an absolute host folder"),
        ('[{"name": "x", "source": "/srv/{username}"}]', "must be an absolute host folder"),
        ('[{"name": "x", "source": "/"}]', "must be an absolute host folder"),
        ('[{"name": "x", "source": "labhub-user-bob"}]', "a user's home volume"),
        ('[{"name": "x", "source": "/d", "groups": "staff"}]', "groups must be a list"),
        ('[{"name": "x", "source": "/d"}, {"name": "x", "source": "/e"}]', "name 'x' is dec"),
        ('[{"name": "x", "source": "/d"}, {"name": "y", "source": "/d"}]', "source '/d' is dec"),
        ("/no/such/datasets.json", "cannot read it"),
    ],
)
def test_a_wrong_declaration_names_the_entry_and_the_fix(value: str, message: str) -> None:
    with pytest.raises(DatasetsError, match=message):
        load_datasets(value, "labhub")


def test_settings_report_a_wrong_datasets_value_with_the_other_problems() -> None:
    with pytest.raises(SettingsError, match=r"DATASETS\[0\]: unknown key 'mode'"):
        Settings.from_env({**MINIMAL_ENV, "DATASETS": '[{"name": "x", "source": "/d", "mode": 1}]'})
    assert Settings.from_env(MINIMAL_ENV).datasets == ()
