"""`labhub check-settings` (what `make up` runs before it starts anything) and
`labhub settings-docs`."""

from pathlib import Path

import pytest
from labhub.cli import main
from labhub.contract import CONTAINER_USER
from labhub.gpu.allocator import load_allocator
from labhub.settings import Settings
from labhub.settingsdoc import GENERATED
from labhub.spawner import spawner_config

from testsupport.minimal_env import MINIMAL_ENV

pytestmark = pytest.mark.unit

# .env's users' network, as `make env` copies it from .env.example.
NETWORK = {
    "USERS_BRIDGE": "labhub-users",
    "USERS_SUBNET": "172.31.240.0/20",
    "USERS_IP_RANGE": "172.31.248.0/21",
    "HUB_USERS_IP": "172.31.240.2",
    "PROXY_USERS_IP": "172.31.240.3",
}
GOOD = {**MINIMAL_ENV, **NETWORK}


def test_good_settings_pass_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    assert main(["check-settings"]) == 0
    assert capsys.readouterr().out.startswith("settings OK")


def test_every_wrong_setting_is_listed_with_its_fix_the_users_network_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = {"USER_MEM_LIMIT": "lots", "IDLE_TIMEOUT": "-1", "HUB_USERS_IP": "10.9.9.9"}
    for name, value in {**GOOD, **wrong}.items():
        monkeypatch.setenv(name, value)
    assert main(["check-settings"]) == 2
    err = capsys.readouterr().err
    assert "3 setting(s) to fix" in err
    assert "USER_MEM_LIMIT='lots' is not valid: a size such as 2G or 512M" in err
    assert "IDLE_TIMEOUT='-1' is not valid" in err
    assert "HUB_USERS_IP=10.9.9.9 must be a host address inside USERS_SUBNET" in err


def test_settings_docs_writes_the_generated_files_and_check_reports_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "docs").mkdir()
    assert main(["settings-docs", "--root", str(tmp_path), "--check"]) == 1
    assert main(["settings-docs", "--root", str(tmp_path)]) == 0
    assert (tmp_path / ".env.example").read_text() == GENERATED[".env.example"]()
    assert main(["settings-docs", "--root", str(tmp_path), "--check"]) == 0
    (tmp_path / "docs/settings.md").write_text("edited by hand\n")
    capsys.readouterr()
    assert main(["settings-docs", "--root", str(tmp_path), "--check"]) == 1
    assert "docs/settings.md differs" in capsys.readouterr().out
    assert (tmp_path / "docs/settings.md").read_text() == "edited by hand\n"


def test_container_prefix_is_what_the_spawner_names_containers_with(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`make down` removes what starts with this: it must be the spawner's own prefix."""
    env = {**MINIMAL_ENV, "DOCKER_NETWORK": "course2", "GPU_DB": str(tmp_path / "gpu.sqlite")}
    settings = Settings.from_env(env)
    assert main(["container-prefix", "course2"]) == 0
    printed = capsys.readouterr().out
    assert printed.endswith("\n")
    config = spawner_config(settings, load_allocator(settings))
    assert printed.rstrip("\n") == config["prefix"] + "-"


def test_dataset_folders_lists_the_host_folders_make_up_checks_on_every_node(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The folders only, which make up binds on every node (a named volume is not checked:
    docs/scale-out.md, "Named servers and datasets")."""
    datasets = (
        '[{"name": "mnist", "source": "/srv/datasets/mnist"},'
        ' {"name": "scans", "source": "lab-scans", "groups": ["radiology"]},'
        ' {"name": "cifar", "source": "/srv/datasets/cifar", "groups": ["ml101"]}]'
    )
    for name, value in {**MINIMAL_ENV, "DATASETS": datasets}.items():
        monkeypatch.setenv(name, value)
    assert main(["dataset-folders"]) == 0
    assert capsys.readouterr().out == "mnist\t/srv/datasets/mnist\ncifar\t/srv/datasets/cifar\n"
    monkeypatch.setenv("DATASETS", "[{}]")
    assert main(["dataset-folders"]) == 2
    assert "DATASETS[0]: name None must be" in capsys.readouterr().err


def test_make_ups_dataset_check_reads_as_the_users_servers_run() -> None:
    """scripts/swarm-manager.sh cannot import labhub: its copy of the servers' user is
    checked here against the one the spawners and the Docker proxy use."""
    script = (Path(__file__).parents[2] / "scripts" / "swarm-manager.sh").read_text()
    assert f'\nSERVER_USER="{CONTAINER_USER}"' in script
