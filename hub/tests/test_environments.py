"""More than one environment (issue 18): the allow-list of images (WORKSPACE_IMAGES), the
profiles that name one, and the Docker proxy that creates containers from those only."""

from __future__ import annotations

import json

import pytest
from labhub.contract import container_name_prefix
from labhub.dockerpolicy import Refused
from labhub.dockerproxy import policy_from_env
from labhub.gpu.profiles import Profile, ProfileError, with_images
from labhub.settings import Settings, SettingsError
from labhub.z2jh import profile_list

from testsupport.minimal_env import MINIMAL_ENV

pytestmark = pytest.mark.unit

WORKSPACE = "labhub/workspace:0.1.0"
TORCH = "labhub/workspace-torch:0.1.0"
CREATE = f"/v1.41/containers/create?name={container_name_prefix('labhub')}ada"


def test_the_allow_list_is_the_workspace_image_unless_more_are_declared() -> None:
    assert Settings.from_env(MINIMAL_ENV).allowed_images == (WORKSPACE,)
    both = Settings.from_env({**MINIMAL_ENV, "WORKSPACE_IMAGES": f"{TORCH}, {WORKSPACE}"})
    assert both.allowed_images == (WORKSPACE, TORCH)


@pytest.mark.parametrize("value", ["labhub/workspace-torch", "labhub/workspace-torch:latest"])
def test_an_untagged_image_on_the_list_is_named_with_the_fix(value: str) -> None:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({**MINIMAL_ENV, "WORKSPACE_IMAGES": f"{TORCH},{value}"})
    [problem] = error.value.problems
    assert problem.startswith(f"WORKSPACE_IMAGES='{TORCH},{value}' holds '{value}'")
    assert "needs an explicit tag" in problem


def test_a_profile_gets_the_image_it_names_or_the_workspace_image() -> None:
    profiles = (Profile("cpu", "CPU"), Profile("torch", "PyTorch", image=TORCH))
    assert [p.image for p in with_images(profiles, (WORKSPACE, TORCH))] == [WORKSPACE, TORCH]


def test_a_profile_naming_an_image_off_the_list_is_refused_with_the_fix() -> None:
    profiles = (Profile("torch", "PyTorch", image="evil/miner:1"),)
    with pytest.raises(ProfileError) as error:
        with_images(profiles, (WORKSPACE, TORCH))
    assert str(error.value) == (
        "profile 'torch' names the image 'evil/miner:1', which is not on the allow-list "
        f"({WORKSPACE}, {TORCH}): add it to WORKSPACE_IMAGES in .env, or name one of those"
    )


def test_the_proxy_allows_exactly_the_listed_images() -> None:
    """Compose joins the workspace image and WORKSPACE_IMAGES (empty or spaced lists too)."""
    check = policy_from_env({"ALLOWED_IMAGES": f"{WORKSPACE}, {TORCH}", "DOCKER_NETWORK": "labhub"})
    only_workspace = policy_from_env(
        {"ALLOWED_IMAGES": f"{WORKSPACE},", "DOCKER_NETWORK": "labhub"}
    )
    for image in (WORKSPACE, TORCH):
        assert check("GET", f"/v1.41/images/{image}/json", b"").target.endswith("/json")
    with pytest.raises(Refused, match="not an allowed workspace image"):
        only_workspace("GET", f"/v1.41/images/{TORCH}/json", b"")
    for image in ("labhub/hub:0.1.0", "labhub/workspace-torch:0.2.0", ""):
        body = json.dumps({"Image": image, "User": "1000"}).encode()
        with pytest.raises(Refused, match="not an allowed workspace image"):
            check("POST", CREATE, body)


def test_kubernetes_profiles_carry_their_image() -> None:
    settings = Settings.from_env({**MINIMAL_ENV, "WORKSPACE_IMAGES": TORCH})
    profiles = with_images(
        (Profile("cpu", "CPU"), Profile("torch", "PyTorch", image=TORCH)), settings.allowed_images
    )
    cpu, torch = profile_list(profiles, (), settings)[0]
    assert "image" not in cpu["kubespawner_override"]  # the chart's singleuser image
    assert torch["kubespawner_override"]["image"] == TORCH
