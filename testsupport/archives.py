"""Tar archives made in memory, as a client of the Docker API's archive routes sends them."""

from __future__ import annotations

import io
import tarfile


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A PAX tar of these members (a member's size is its data's; only files carry data)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for member, data in members:
            member.size = len(data) if member.isreg() else 0
            archive.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return buffer.getvalue()
