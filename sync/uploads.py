"""An adapter uploaded as a tar archive (optionally gzipped): its files, unpacked safely.

Only regular files with plain names are taken (an adapter folder is flat); a link, a
folder, a path with a separator or `..`, or more than `max_files` members is refused, so an
archive cannot write outside the folder it is unpacked in.
"""

import tarfile
from pathlib import Path

from sync.adapters import AdapterRefused

__all__ = ["unpack_adapter"]


def unpack_adapter(archive: Path, destination: Path, *, max_files: int = 64) -> Path:
    """Unpack `archive` into `destination`; AdapterRefused with the reason if it is unfit."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = tar.getmembers()
            if len(members) > max_files:
                raise AdapterRefused(f"the archive has {len(members)} members, more than {max_files}")
            for member in members:
                name = member.name.removeprefix("./")
                if not member.isfile() or not name or "/" in name or name.startswith("."):
                    raise AdapterRefused(f"the archive may hold only an adapter's files, not {member.name!r}")
                member.name = name
            destination.mkdir(parents=True, exist_ok=True)
            tar.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise AdapterRefused(f"not a readable tar archive: {exc}") from exc
    return destination
