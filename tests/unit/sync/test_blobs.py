"""Content-addressed blobs: stored under their digest, downloads resumed, and a download or a
file on disk whose bytes do not hash to its name refused and dropped."""

import hashlib
from pathlib import Path

import pytest

from sync.blobs import BlobMismatch, BlobStore, file_sha256


def test_a_blob_is_stored_under_its_digest_and_a_bad_download_is_refused(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    source = tmp_path / "file"
    source.write_bytes(b"x" * 3000)
    digest = blobs.put_file(source)
    assert digest == file_sha256(source)
    assert blobs.has(digest)
    assert blobs.verify(digest)
    # A download in two parts (resumed), then one corrupted, then one truncated.
    other = b"y" * 5000
    other_digest = hashlib.sha256(other).hexdigest()
    blobs.append(other_digest, other[:2000])
    assert blobs.partial_size(other_digest) == 2000
    blobs.append(other_digest, other[2000:])
    blobs.finish(other_digest, len(other))
    assert blobs.path(other_digest).read_bytes() == other
    third = b"z" * 100
    third_digest = hashlib.sha256(third).hexdigest()
    blobs.append(third_digest, b"Z" * 100)
    with pytest.raises(BlobMismatch):
        blobs.finish(third_digest, 100)
    assert blobs.partial_size(third_digest) == 0  # dropped: fetched again from the start
    blobs.append(third_digest, third[:50])
    with pytest.raises(BlobMismatch):
        blobs.finish(third_digest, 100)
    assert not blobs.has(third_digest)
    # Damage on disk is found by verify, and the blob goes.
    blobs.path(digest).write_bytes(b"rot")
    assert not blobs.verify(digest)
    assert not blobs.has(digest)
    with pytest.raises(ValueError, match="sha256"):
        blobs.path("../../etc/passwd")
