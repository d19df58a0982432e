"""Writing files atomically and naming content by a hash: the two helpers every module that stores
something (results, weights, logs, caches) shares.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

TEMPORARY_PREFIX = ".tmp-"  # an unfinished write; never read as a result or a cache entry


def temporary_path(path) -> Path:
    """The temporary file beside `path` that an atomic write of it goes through: `.tmp-<pid>-<name>`
    (one per process, so two processes writing the same file never share one)."""
    path = Path(path)
    return path.parent / f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}"


def write_atomic(path, payload: bytes | str) -> Path:
    """Writes `payload` (bytes, or text as UTF-8) to `path`, creating its folder: first to
    `temporary_path(path)`, then `os.replace`, so a reader sees the old file or the whole new one,
    never a part of it. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.write_bytes(payload.encode("utf-8") if isinstance(payload, str) else payload)
    os.replace(tmp, path)
    return path


def write_json_atomic(path, obj, indent: int = 1) -> Path:
    """`obj` as indented JSON text, written with `write_atomic`."""
    return write_atomic(path, json.dumps(obj, indent=indent))


def json_digest(payload, length: int = 16) -> str:
    """The first `length` hex digits of the SHA-256 of `payload`'s canonical JSON (sorted keys, other
    objects as `str`): the key of an experiment (`pattlite.experiments.Experiment.key`) or of a cache
    entry, equal for equal content whatever the dict order."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
