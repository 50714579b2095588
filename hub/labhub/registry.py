"""Images through a registry: what a digest reference is, and where `make push` puts them.

In Swarm mode each node pulls the users' images from a registry on the LAN (REGISTRY).
`make push` (scripts/push-images.sh) pushes the workspace image and every WORKSPACE_IMAGES
image (`labhub/workspace:<version>` to `<REGISTRY>/workspace:<version>`) and records what
the registry answered, the immutable `<REGISTRY>/workspace@sha256:<digest>`, as
IMAGE_DIGESTS (`<local tag>=<digest reference>`, comma separated) in its record file. The
hub creates services with those references only and the Docker proxy allows those
references only: a tag can be moved in the registry to other bytes, a digest cannot.

A registry that wants a login for pulls (a campus registry's robot account or deploy
token, REGISTRY_USERNAME and REGISTRY_PASSWORD) gets it from the Docker proxy in front of
the manager: it adds `X-Registry-Auth` (`pull_auth`) to each service it creates, and the
manager hands it to the node that pulls, as `docker service create --with-registry-auth`
does. The hub's requests carry no credentials: the proxy forwards no client header.
"""

from __future__ import annotations

import base64
import json
import re

# host[:port] then an optional path: registry.lab.example.edu:5000/labhub
_REGISTRY = re.compile(
    r"(?P<host>[a-z0-9](?:[a-z0-9.-]{0,253}[a-z0-9])?)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
)
_DIGEST_REFERENCE = re.compile(r"(?P<name>[a-z0-9][a-z0-9._:/-]{0,254})@sha256:[0-9a-f]{64}")


def registry_address(raw: str) -> str:
    """REGISTRY: empty (no registry) or `host[:port][/path]`, no scheme, no tag."""
    if raw and not _REGISTRY.fullmatch(raw):
        raise ValueError(
            "is not a registry address: host[:port][/path] in lower case, without https:// "
            "or a tag, e.g. registry.lab.example.edu:5000/labhub"
        )
    return raw


def registry_host(registry: str) -> str:
    """The registry's `host[:port]`, which Docker keys logins by: REGISTRY without its path."""
    return registry.split("/", 1)[0]


def pull_auth(registry: str, username: str, password: str) -> str:
    """The `X-Registry-Auth` header value for a pull from `registry` with this account: its
    JSON, base64url encoded, as Docker's API reads it."""
    login = {"username": username, "password": password, "serveraddress": registry_host(registry)}
    return base64.urlsafe_b64encode(json.dumps(login).encode()).decode("ascii")


def is_digest_reference(image: str) -> bool:
    """`name@sha256:<64 hex>`: an image that no push can change."""
    return bool(_DIGEST_REFERENCE.fullmatch(image))


def check_pinned(registry: str, image: str) -> str:
    """`image` if it is a digest reference in `registry`; else ValueError saying the fix."""
    match = _DIGEST_REFERENCE.fullmatch(image)
    if match is None or not match["name"].startswith(f"{registry}/"):
        raise ValueError(
            f"{image!r} is not an image of REGISTRY={registry} by digest "
            f"({registry}/workspace@sha256:...): run `make push`, which pushes the images "
            "the nodes run and records their digest references (IMAGE_DIGESTS in "
            "pushed-images.env)"
        )
    return image


def image_digests(raw: str) -> dict[str, str]:
    """IMAGE_DIGESTS, as `make push` records it: `<local tag>=<digest reference>`, comma
    separated; empty: none."""
    digests: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        tag, _, reference = item.partition("=")
        if not tag or not is_digest_reference(reference):
            raise ValueError(
                f"holds {item!r}, which is not <image:tag>=<name>@sha256:<64 hex digits>: "
                "run `make push`, which writes this list"
            )
        digests[tag] = reference
    return digests
