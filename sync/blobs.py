"""Content-addressed blobs: a file is stored under its sha256 and only ever after a check.

`<root>/sha256/<first two>/<digest>` holds verified blobs; `<root>/partial/<digest>` a
download in progress, appended to across attempts and peers (resumable), then verified and
moved into place; a blob whose bytes do not hash to its name is refused and its partial
dropped, so it is fetched again. Moves are atomic renames inside one file system.
"""

import hashlib
import os
import shutil
from pathlib import Path

__all__ = ["BlobMismatch", "BlobStore", "InvalidDigest", "file_sha256"]

_CHUNK = 1 << 20


class BlobMismatch(ValueError):
    """Bytes that do not hash to the digest they were sent as (corrupted or truncated)."""


class InvalidDigest(ValueError):
    """A blob named by something that is not a sha256 digest (a peer's or a client's)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidDigest(f"not a sha256 digest: {digest[:80]!r}")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "partial").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / "sha256" / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def put_file(self, source: Path) -> str:
        """Store a copy of `source`; its digest."""
        digest = file_sha256(source)
        if not self.has(digest):
            partial = self._partial(digest)
            shutil.copyfile(source, partial)
            self._install(digest, partial, expected_size=None)
        return digest

    # --- downloads, resumable ---------------------------------------------------------------

    def _partial(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / "partial" / digest

    def partial_size(self, digest: str) -> int:
        """Bytes of `digest` already downloaded: where to resume."""
        partial = self._partial(digest)
        return partial.stat().st_size if partial.exists() else 0

    def append(self, digest: str, chunk: bytes) -> None:
        with self._partial(digest).open("ab") as file:
            file.write(chunk)

    def discard_partial(self, digest: str) -> None:
        self._partial(digest).unlink(missing_ok=True)

    def finish(self, digest: str, size: int) -> None:
        """Verify the download and move it into place; BlobMismatch (and the partial dropped)
        when it is not what `digest` names."""
        self._install(digest, self._partial(digest), expected_size=size)

    def _install(self, digest: str, partial: Path, expected_size: int | None) -> None:
        actual = partial.stat().st_size if partial.exists() else 0
        if (expected_size is not None and actual != expected_size) or file_sha256(partial) != digest:
            partial.unlink(missing_ok=True)
            raise BlobMismatch(f"blob {digest[:12]}: {actual} bytes that do not hash to its digest")
        with partial.open("rb") as file:
            os.fsync(file.fileno())
        final = self.path(digest)
        final.parent.mkdir(exist_ok=True)
        os.replace(partial, final)

    def verify(self, digest: str) -> bool:
        """Whether the stored blob still hashes to its name; a damaged one is removed."""
        if not self.has(digest):
            return False
        if file_sha256(self.path(digest)) == digest:
            return True
        self.path(digest).unlink(missing_ok=True)
        return False
