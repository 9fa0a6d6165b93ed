"""Files a reader sees whole or not at all, and directories of shards sealed with their sha256.

The teacher cache, the rollout sets and the pipeline's records are all written this way, so that a job killed at
any moment leaves either a sound file or none, a rerun can tell a finished shard from a partial or corrupted one,
and a rerun with other settings is refused instead of mixing two jobs' outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

logger = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either nothing or all of it, even if the writer is killed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_sealed(seal: Path, files: dict[str, Path], warn: bool = True) -> bool:
    """Whether every file exists with the sha256 its seal recorded (``files``: seal key -> path).

    The seal of a shard written completely is written after it; a missing seal is a shard still being written (or
    never); a seal whose hashes do not match is a partial or corrupted shard, said once in the log.
    """
    if not seal.is_file() or not all(path.is_file() for path in files.values()):
        return False
    try:
        info = json.loads(seal.read_text())
        bad = [path for key, path in files.items() if info.get(key) != file_sha256(path)]
    except (json.JSONDecodeError, TypeError, AttributeError):
        bad = list(files.values())
    if bad and warn:
        for path in bad:
            logger.warning("%s does not match its seal (a partial or corrupted write): rewriting it.", path)
    return not bad


class ShardedMetadata:
    """The shard plan of a sealed directory's metadata (a dataclass with ``shard_size``, ``trl_edge_version`` and the
    row count named by ``ROWS_FIELD``): shard ``i`` holds the rows ``[i * shard_size, (i + 1) * shard_size)``."""

    ROWS_FIELD: ClassVar[str]

    @property
    def num_shards(self) -> int:
        return -(-getattr(self, self.ROWS_FIELD) // self.shard_size)

    def shard_range(self, index: int) -> tuple[int, int]:
        """The rows ``[start, stop)`` that shard ``index`` holds."""
        start = index * self.shard_size
        return start, min(start + self.shard_size, getattr(self, self.ROWS_FIELD))

    def settings(self) -> dict:
        """The fields two runs must agree on to write into the same directory (all but the version that wrote it)."""
        out = asdict(self)
        out.pop("trl_edge_version")
        return out


def prepare_output(directory: Path, metadata_file: str, settings: dict, old_settings, payload: bytes, *,
                   overwrite: bool, is_main: bool, error, what: str) -> None:  # fmt: skip
    """Start or resume a sealed directory whose ``metadata_file`` records the settings that made it.

    ``old_settings(directory)`` reads the settings already there. Resuming with other settings raises ``error``
    naming each difference; ``overwrite`` starts the directory again. Only the main process writes.
    """
    existing = directory / metadata_file
    if existing.is_file() and not overwrite:
        old = old_settings(directory)
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise error(
                f"{directory} already holds {what} made with other settings ({changes}). Use another "
                "output_dir, or pass overwrite=True (`--overwrite`) to start it again."
            )
        return
    if is_main:
        if existing.is_file() and overwrite:
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(existing, payload)
