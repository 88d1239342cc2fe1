"""The archive a GPU session leaves behind: what it produced that may be carried back and committed,
as one gzipped tar no larger than what a GPU machine lets come back.

Members are given by name (bench.gpu_session lists them), never collected by walking a directory, so
no checkpoint (hundreds of MB of training state) and no panel (it shows the test images, which may not
be redistributed) can slip in. Members that would not fit are left out, last ones first, and listed in
the archive's own ``ARCHIVE.txt``. The archive is written atomically: a reader sees the previous one or
the new one.
"""

from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError
from bench.records import write_bytes_atomic

ARCHIVE_LIMIT_BYTES = 16_000_000  # "16 MB" read as the smaller of MB and MiB
MANIFEST_NAME = "ARCHIVE.txt"
_BLOCK = 512  # tar's block: each member is a header block plus its data padded to blocks
# Room for the manifest, tar's end blocks and record padding (10240 bytes), and gzip's framing of data
# that does not compress (a few bytes per 64 KiB block)
_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Member:
    name: str  # its path inside the archive
    data: bytes


@dataclass(frozen=True)
class ArchiveSummary:
    path: Path
    size_bytes: int
    members: list[str]  # in the archive, the manifest first
    left_out: list[str]  # did not fit under the limit


def tar_size(data: bytes) -> int:
    """Bytes one member takes in an uncompressed tar."""
    return _BLOCK + -(-len(data) // _BLOCK) * _BLOCK


def fit(members: list[Member], limit: int) -> tuple[list[Member], list[Member]]:
    """The members that fit in ``limit`` bytes, taken in the given order (most important first), and
    those left out. Counted uncompressed, so the gzipped archive fits whatever the compression."""
    kept, left_out, used = [], [], _OVERHEAD_BYTES
    for member in members:
        size = tar_size(member.data)
        if used + size <= limit:
            kept.append(member)
            used += size
        else:
            left_out.append(member)
    return kept, left_out


def manifest(name: str, kept: list[Member], left_out: list[Member]) -> Member:
    lines = ["What this archive holds (bytes uncompressed):"] + [f"  {m.name}  {len(m.data)}" for m in kept]
    if left_out:
        lines += ["Left out, to stay under the size limit:"] + [f"  {m.name}  {len(m.data)}" for m in left_out]
    return Member(name, ("\n".join(lines) + "\n").encode())


def write_archive(path: Path, members: list[Member], limit: int = ARCHIVE_LIMIT_BYTES,
                  manifest_name: str = MANIFEST_NAME) -> ArchiveSummary:
    """Write ``members`` (most important first) as a gzipped tar at ``path``, at most ``limit`` bytes, with
    a manifest of what it holds and what it left out (``manifest_name`` inside the archive)."""
    kept, left_out = fit(members, limit)
    listed = [manifest(manifest_name, kept, left_out), *kept]
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in listed:
            info = tarfile.TarInfo(member.name)
            info.size, info.mtime, info.mode = len(member.data), now, 0o644
            tar.addfile(info, io.BytesIO(member.data))
    data = buffer.getvalue()
    if len(data) > limit:  # cannot happen (counted uncompressed): refuse rather than leave one that cannot come back
        raise BenchError(f"{path}: {len(data)} bytes, over the {limit} bytes allowed")
    write_bytes_atomic(path, data)
    return ArchiveSummary(path, len(data), [m.name for m in listed], [m.name for m in left_out])
