"""A local directory as an object store (``file://dir`` or a bare path)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from pixelperfect.storage.base import ObjectNotFoundError, ObjectStore, validate_key


class LocalStore(ObjectStore):
    """A directory. Writes are atomic (temporary file, then rename), so a reader never sees half a mask."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(self.url_for(key)) from None

    def put(self, key: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_many(self, keys: Sequence[str]) -> int:
        """Unlink the files, then the directories the deletions left empty (never the root)."""
        parents = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            while parent != self.root and self.root in parent.parents:
                try:
                    parent.rmdir()
                except OSError:  # not empty (or gone): stop climbing
                    break
                parent = parent.parent
        return len(keys)

    def list(self, prefix: str = "") -> Iterator[str]:
        if prefix:
            validate_key(prefix.rstrip("/") or ".x")
        yield from (key for key in self._walk(self.root, "") if key.startswith(prefix))

    def _walk(self, directory: Path, rel: str) -> Iterator[str]:
        """Keys in lexicographic order, like S3: a directory sorts as its name plus '/'."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        named = sorted((e.name + ("/" if e.is_dir() else ""), e) for e in entries if not e.name.startswith(".tmp-"))
        for name, entry in named:
            if name.endswith("/"):
                yield from self._walk(Path(entry.path), rel + name)
            else:
                yield rel + name
