"""A user's home as a tar stream: checked member by member, re-written, summed.

Moving a home between nodes (`labhub.homemove`) streams the engine's archive of the old
volume (`GET /containers/<helper>/archive?path=/home/jovyan`) into the new one
(`PUT .../archive?path=/home`). Both the move command and the node's Docker proxy
(`PROXY_POLICY=node`) pass that stream through `rewrite`: every member must be what a
lab server can make in its home (a file, folder, symbolic or hard link under `jovyan/`,
owned by 1000:100, no set-user/group-ID file), and the tar sent on is written anew from
the checked fields only, so nothing else of the client's bytes (devices, extended
attributes such as file capabilities, foreign owners) reaches the engine. `Manifest` is
what the move compares on both sides: each member's type, mode, owner, size, link target
and content digest. A restore also takes a backup made on one host (`scripts/backup.sh`
archives a volume as `tar -C <volume> .`: members `.` and `./...`): `one_host` names
those members under `jovyan/` before the checks, so what is sent on is the same either way.

Pure: file objects in, bytes out; no Docker inside.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

from .contract import CONTAINER_USER, HOME_DIR, OWNER_LABEL, volume_name_for

# The archive of HOME_DIR names every member under the folder's own name.
TOP = PurePosixPath(HOME_DIR).name
# Where that archive is put back: the parent, so `jovyan/` lands on the volume's root.
PARENT = str(PurePosixPath(HOME_DIR).parent)
UID, GID = (int(part) for part in CONTAINER_USER.split(":"))
CHUNK = 1024 * 1024
_KINDS = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}
_KINDS[tarfile.LNKTYPE] = "hardlink"


class BadHomeArchive(Exception):
    """A member no lab server could have made in its home; the message names it."""


@dataclass(frozen=True)
class Entry:
    """One member as the move compares it (mtimes are left out: they are not the data)."""

    kind: str
    mode: int
    owner: str
    size: int
    link: str
    sha256: str


@dataclass
class Manifest:
    """Every member of a home archive by name; `bytes` is the files' total size."""

    entries: dict[str, Entry] = field(default_factory=dict)
    bytes: int = 0

    def differences(self, other: Manifest, most: int = 5) -> list[str]:
        """What differs from `other`, a few names at most (empty when they are the same)."""
        found = [
            f"{name}: {self.entries.get(name)} here, {other.entries.get(name)} there"
            for name in sorted(self.entries.keys() | other.entries.keys())
            if self.entries.get(name) != other.entries.get(name)
        ]
        return found[:most] + ([f"... {len(found) - most} more"] if len(found) > most else [])

    def digest(self) -> str:
        """One SHA-256 over the whole manifest, to print on both sides."""
        total = hashlib.sha256()
        for name in sorted(self.entries):
            total.update(f"{name}\0{self.entries[name]}\n".encode("utf-8", "surrogateescape"))
        return total.hexdigest()


def checked(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """A fresh member holding only the checked fields of `member`; BadHomeArchive if a lab
    server could not have made it in its home."""
    kind = _KINDS.get(member.type)
    if kind is None or member.issparse():
        raise BadHomeArchive(f"{member.name!r}: only files, folders and links ({member.type!r})")
    _check_name(member.name, "member")
    if (member.uid, member.gid) != (UID, GID):
        raise BadHomeArchive(
            f"{member.name!r} is owned by {member.uid}:{member.gid}, not {CONTAINER_USER}"
        )
    if kind == "file" and member.mode & 0o6000:
        raise BadHomeArchive(f"{member.name!r} is set-user/group-ID (mode {member.mode:o})")
    if kind == "hardlink":
        _check_name(member.linkname, "hard link target")
    if kind in ("symlink", "hardlink") and (not member.linkname or "\0" in member.linkname):
        raise BadHomeArchive(f"{member.name!r} links to {member.linkname!r}")
    fresh = tarfile.TarInfo(member.name)
    fresh.type = member.type
    fresh.mode = member.mode & 0o7777
    fresh.uid, fresh.gid = UID, GID
    fresh.size = member.size if kind == "file" else 0
    fresh.mtime = member.mtime
    fresh.linkname = member.linkname if kind in ("symlink", "hardlink") else ""
    return fresh


def _check_name(name: str, what: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or path.parts[:1] != (TOP,) or "\0" in name:
        raise BadHomeArchive(f"{what} {name!r} is not inside {TOP}/")


def rewrite(
    source: IO[bytes] | io.RawIOBase,
    manifest: Manifest | None = None,
    progress: Callable[[Manifest], None] | None = None,
    one_host: bool = False,
) -> Iterator[bytes]:
    """The home archive read from `source`, checked and written anew, in chunks; fills
    `manifest` on the way and calls `progress` after each member. The last chunk (the
    end-of-archive blocks) comes only once every member passed. `one_host`: members named
    `.` and `./...` (a one-host backup) are taken as `jovyan` and `jovyan/...`."""
    seen = manifest if manifest is not None else Manifest()
    try:
        with tarfile.open(fileobj=source, mode="r|") as archive:
            for member in archive:
                if one_host:
                    member.name = under_top(member.name)
                    if member.islnk():
                        member.linkname = under_top(member.linkname)
                fresh = checked(member)
                _check_not_through_a_link(fresh.name, seen)
                yield fresh.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
                digest = hashlib.sha256()
                if fresh.isreg():
                    data = archive.extractfile(member)
                    assert data is not None  # a regular file always has data
                    yield from _data(data, fresh.size, digest)
                    seen.bytes += fresh.size
                seen.entries[fresh.name] = _entry(fresh, digest.hexdigest(), seen)
                if progress is not None:
                    progress(seen)
    except tarfile.TarError as error:
        raise BadHomeArchive(f"not a whole tar stream: {error}") from None
    if not seen.entries or TOP not in seen.entries:
        raise BadHomeArchive(f"the archive has no {TOP}/ folder")
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def under_top(name: str) -> str:
    """A one-host backup's member name (`.`, `./x`) as the engine's archive of HOME_DIR
    names it (`jovyan`, `jovyan/x`); any other name unchanged (and checked as it is)."""
    if name in (".", "./"):
        return TOP
    return f"{TOP}/{name[2:]}" if name.startswith("./") else name


def _check_not_through_a_link(name: str, seen: Manifest) -> None:
    """No member below a symbolic link sent earlier: the engine would write through it
    (an archive of a real home never lists anything below a link)."""
    for parent in PurePosixPath(name).parents:
        entry = seen.entries.get(str(parent))
        if entry is not None and entry.kind == "symlink":
            raise BadHomeArchive(f"{name!r} is below the symbolic link {str(parent)!r}")


def _entry(member: tarfile.TarInfo, sha256: str, seen: Manifest) -> Entry:
    """How `member` is compared. A hard link counts as the file it links to: which of two
    names is the file and which the link depends on the order the engine walks in."""
    if member.islnk():
        if member.linkname not in seen.entries:
            raise BadHomeArchive(f"{member.name!r} links to {member.linkname!r}, not before it")
        return seen.entries[member.linkname]
    owner = f"{member.uid}:{member.gid}"
    content = sha256 if member.isreg() else ""
    return Entry(_KINDS[member.type], member.mode, owner, member.size, member.linkname, content)


def _data(data: IO[bytes], size: int, digest: hashlib._Hash) -> Iterator[bytes]:
    """A member's content in chunks, padded to whole tar blocks."""
    left = size
    while left:
        chunk = data.read(min(CHUNK, left))
        if not chunk:
            raise BadHomeArchive("the tar stream ends inside a file")
        digest.update(chunk)
        left -= len(chunk)
        yield chunk
    if remainder := size % tarfile.BLOCKSIZE:
        yield b"\0" * (tarfile.BLOCKSIZE - remainder)


def manifest_of(source: IO[bytes] | io.RawIOBase, one_host: bool = False) -> Manifest:
    """The manifest of a home archive (every member checked as `rewrite` checks it)."""
    manifest = Manifest()
    for _ in rewrite(source, manifest, one_host=one_host):
        pass
    return manifest


class ChunkReader(io.RawIOBase):
    """A readable file over an iterable of byte chunks (an engine's streamed answer)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = chunk
        count = min(len(buffer), len(self._left))
        buffer[:count] = self._left[:count]
        self._left = self._left[count:]
        return count


# --- The copy helper: what the move command creates and the node proxy accepts ---------
def copy_helper_prefix(network: str) -> str:
    """What a copy helper container's name starts with (a 16-hex-digit suffix follows)."""
    return f"{network}-homecopy-"


def copy_helper(network: str, user: str, image: str) -> dict[str, object]:
    """The create body of a container that is never started: a handle on the user's volume
    for the engine's archive calls. Only that volume (`nocopy`: the image's files never
    land in it), no network, no capabilities. Its root stays writable: the engine refuses
    to put an archive into a read-only root even where the path is a volume's parent."""
    volume = volume_name_for(user, network)
    return {
        "Image": image,
        "Cmd": ["true"],
        "User": CONTAINER_USER,
        "Labels": {OWNER_LABEL: user},
        "NetworkDisabled": True,
        "HostConfig": {
            "Binds": [f"{volume}:{HOME_DIR}:rw,nocopy"],
            "NetworkMode": "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
        },
    }
