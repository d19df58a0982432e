"""Writing files atomically, naming content by a hash, and the integrity of cache files: the helpers
every module that stores something (results, weights, logs, caches) shares.

Cache files (the pixel cache, feature shards) carry a digest record `{"bytes": size, "sha256": hex}`
written after their data; `check_file` compares a file with its record: its size on every call, its
SHA-256 once per process and file state (memoised by path, size, modification and change time), so a
file damaged after it was written (bit rot, a bad copy, an interrupted write) is refused, never read.
Large cache files are written with ordinary writes into space reserved first (`NpyWriter`), so a full
disk is an `OSError` naming the file (`NoSpaceError`), never a SIGBUS from a memory-mapped write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

TEMPORARY_PREFIX = ".tmp-"  # an unfinished write; never read as a result or a cache entry
DIGEST_ALGORITHM = "sha256"  # measured 1.07 GB/s on one core of this machine (SHA-NI); blake2b 0.47
_CHUNK = 1 << 20
# A temporary whose owner process is gone is removed only after this long without a write, in case
# the owner is a process on another machine sharing the folder (its PID means nothing here).
STALE_SECONDS = 600
CACHE_SPACE_HINT = (
    "or set PATTLITE_CACHE_DIR to a folder on a disk with more room (the pixel and feature caches are written there)"
)


class DamagedCacheError(ValueError):
    """A cache file that is truncated, unreadable, lacks its digest or no longer matches it; the
    message names the file and how to rebuild it."""


class NoSpaceError(OSError):
    """The disk filled up while writing a file; the message names the file, the bytes it needs and
    what to do. `errno` is ENOSPC."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


def temporary_path(path) -> Path:
    """The temporary file beside `path` that an atomic write of it goes through: `.tmp-<pid>-<name>`
    (one per process, so two processes writing the same file never share one)."""
    path = Path(path)
    return path.parent / f"{TEMPORARY_PREFIX}{os.getpid()}-{path.name}"


def write_atomic(path, payload: bytes | str) -> Path:
    """Writes `payload` (bytes, or text as UTF-8) to `path`, creating its folder: first to
    `temporary_path(path)`, then `os.replace`, so a reader sees the old file or the whole new one,
    never a part of it; the temporary file is removed if the write fails or is interrupted. A full
    disk raises `NoSpaceError` naming `path`. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    try:
        try:
            tmp.write_bytes(data)
        except OSError as error:
            raise_if_no_space(error, path, len(data), "")
            raise
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
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


# ---- disk space -------------------------------------------------------------------------------------


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def raise_if_no_space(error: OSError, path, needed: int, hint: str = CACHE_SPACE_HINT) -> None:
    """Raises `NoSpaceError` (from `error`) when `error` is a full disk or quota: the message names
    `path`, the `needed` bytes, the free bytes there and what to do (`hint` after "free ... there")."""
    if getattr(error, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
        return
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    others = _temporaries_in(path.parent)
    held = (
        (
            f"; temporary files of other or interrupted runs there hold {_size(sum(s for _, s in others))} "
            f"({', '.join(p.name for p, _ in others[:3])}{' ...' if len(others) > 3 else ''}: delete "
            "them if no run is writing there)"
        )
        if others
        else ""
    )
    short = needed - free if free is not None and free < needed else needed
    raise NoSpaceError(
        f"no space left on the disk of {path} while writing it ({_size(needed)} needed for the file, "
        f"{'?' if free is None else _size(free)} free){held}: free at least {_size(short)} there"
        + (f", {hint}" if hint else "")
    ) from error


def preallocate(file, nbytes: int, path) -> None:
    """Reserves `nbytes` for the open `file` (`os.posix_fallocate`; where the filesystem or system
    lacks it, by writing zeros), so a full disk fails here, before any data is computed, and never
    later inside a memory-mapped write (SIGBUS). Raises `NoSpaceError` naming `path`."""
    try:
        try:
            os.posix_fallocate(file.fileno(), 0, nbytes)
            return
        except AttributeError:  # no posix_fallocate (macOS)
            pass
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        zeros = bytes(min(nbytes, _CHUNK))
        file.seek(0)
        for start in range(0, nbytes, len(zeros) or 1):
            file.write(zeros[: min(len(zeros), nbytes - start)])
        file.flush()
        file.seek(0)
    except OSError as error:
        raise_if_no_space(error, path, nbytes)
        raise


class NpyWriter:
    """A `.npy` file of known shape written with ordinary writes into space reserved up front.

    `append` writes rows in order and keeps a running SHA-256 of the file (no second read to digest
    it); `write_row(i, row)` writes one row anywhere (then `close` digests the file by reading it).
    `close` returns the file's digest record. A full disk raises `NoSpaceError` naming the file; on
    any error the caller removes the file (it is meant to be a temporary one).
    """

    def __init__(self, path, shape, dtype, space_hint: str = CACHE_SPACE_HINT):
        self.path, self.shape, self.dtype = Path(path), tuple(int(s) for s in shape), np.dtype(dtype)
        self._hint = space_hint
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        header = _npy_header(self.shape, self.dtype)
        self.offset = len(header)
        self.nbytes = self.offset + self.shape[0] * self.row_bytes
        self._file = open(self.path, "wb+")
        try:
            preallocate(self._file, self.nbytes, self.path)
            self._write(header)
        except BaseException:
            self._file.close()
            raise
        self._hash = hashlib.sha256(header)
        self._end = self.offset  # where `append` writes next

    def _write(self, data, at: int | None = None) -> None:
        view = memoryview(data).cast("B")
        try:
            if at is None:
                self._file.write(view)
            else:
                self._file.flush()
                while len(view):
                    done = os.pwrite(self._file.fileno(), view, at)
                    view, at = view[done:], at + done
        except OSError as error:
            raise_if_no_space(error, self.path, self.nbytes, self._hint)
            raise

    def _check(self, values, rows: int) -> np.ndarray:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape != (rows,) + self.shape[1:]:
            raise ValueError(f"{self.path}: rows of shape {values.shape[1:]}; the file holds {self.shape[1:]}")
        return values

    def append(self, rows) -> None:
        """Writes `rows` (shape (k,) + row shape) after the rows written so far."""
        rows = self._check(rows, len(rows))
        if self._end + rows.nbytes > self.nbytes:
            raise ValueError(f"{self.path}: more rows than its {self.shape[0]}")
        self._write(rows)
        if self._hash is not None:
            self._hash.update(memoryview(rows).cast("B"))
        self._end += rows.nbytes

    def write_row(self, position: int, row) -> None:
        """Writes one row at `position` (any order; the digest is then read back in `close`)."""
        row = self._check(np.asarray(row)[None], 1)
        if not 0 <= position < self.shape[0]:
            raise IndexError(f"{self.path}: row {position} outside 0..{self.shape[0] - 1}")
        self._hash = None
        self._write(row, self.offset + position * self.row_bytes)

    def __setitem__(self, position, row) -> None:
        self.write_row(int(position), row)

    def discard(self) -> None:
        """Closes and deletes the file (after a failure or an interrupt)."""
        self._file.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> dict:
        """Flushes and closes the file; returns its digest record `{"bytes", "sha256"}`."""
        try:
            self._file.flush()
        except OSError as error:
            raise_if_no_space(error, self.path, self.nbytes, self._hint)
            raise
        finally:
            self._file.close()
        if self._hash is not None:
            if self._end != self.nbytes:
                raise ValueError(
                    f"{self.path}: {(self._end - self.offset) // max(self.row_bytes, 1)} of "
                    f"{self.shape[0]} rows written"
                )
            return {"bytes": self.nbytes, DIGEST_ALGORITHM: self._hash.hexdigest()}
        return file_record(self.path)


def _npy_header(shape, dtype) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    )
    return buffer.getvalue()


# ---- memory -----------------------------------------------------------------------------------------


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, from POSIX `sysconf`; None where the system does not say (not
    POSIX). The one fallback: None, so that each caller states what an unknown size means for it (the grid
    then leaves Ray's memory default alone)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# ---- digests ----------------------------------------------------------------------------------------


def file_digest(path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (what `sha256sum` prints)."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)  # one buffer, reused: reading a large file costs no memory
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while done := f.readinto(buffer):
            digest.update(view[:done])
    return digest.hexdigest()


def file_record(path) -> dict:
    """A file's digest record: `{"bytes": size, "sha256": hex}`."""
    return {"bytes": os.stat(path).st_size, DIGEST_ALGORITHM: file_digest(path)}


# Files whose content matched their record in this process, by (path, size, mtime, ctime, inode):
# a write to the file changes its times, so a file changed since is checked again.
_VERIFIED: dict[tuple, str] = {}


def _state(path) -> tuple:
    stat = os.stat(path)
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


def mark_verified(path, record: dict) -> None:
    """Records that `path` holds `record`'s content (it was just written from those bytes), so
    `check_file` in this process does not read it again."""
    _VERIFIED[_state(path)] = record[DIGEST_ALGORITHM]


def check_file(path, record, rebuild: str) -> None:
    """Raises `DamagedCacheError` unless the file at `path` has the size and SHA-256 of `record`.

    The size is compared on every call (a `stat`); the content once per process and file state, then
    memoised. `rebuild` (how to rebuild the file, e.g. "delete the folder X; the next run computes it
    again") ends the message.
    """
    path = Path(path)
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("bytes"), int)
        or not isinstance(record.get(DIGEST_ALGORITHM), str)
    ):
        raise DamagedCacheError(f"{path}: its digest record {record!r} is missing or malformed; {rebuild}")
    try:
        state = _state(path)
    except FileNotFoundError:
        raise DamagedCacheError(f"{path} is missing (its digest record is there); {rebuild}") from None
    if state[1] != record["bytes"]:
        raise DamagedCacheError(
            f"{path} holds {state[1]:,} bytes, its digest record {record['bytes']:,}: "
            f"the file is truncated or was changed after it was written; {rebuild}"
        )
    if _VERIFIED.get(state) == record[DIGEST_ALGORITHM]:
        return
    actual = file_digest(path)
    if actual != record[DIGEST_ALGORITHM]:
        raise DamagedCacheError(
            f"{path} does not match its digest (SHA-256 {actual[:16]}..., recorded "
            f"{record[DIGEST_ALGORITHM][:16]}...): the file was changed after it was "
            f"written (a disk error, a bad copy or an interrupted write); {rebuild}"
        )
    _VERIFIED[state] = actual


def read_json(path, rebuild: str):
    """A JSON file's content, or `DamagedCacheError` naming it (missing, unreadable, not JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DamagedCacheError(f"{path} is missing; {rebuild}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DamagedCacheError(f"{path} cannot be read ({type(error).__name__}: {error}); {rebuild}") from None


# ---- temporaries left by killed runs -------------------------------------------------------------

_OWNER = re.compile(r"^(?:[a-z]+-)?(\d+)-")
_CLEANED: set = set()


@contextlib.contextmanager
def exclusive_lock(path, on_busy=None):
    """Hold an exclusive `flock` on `path` (created when absent) while inside; yields its descriptor.

    When another process holds it, `on_busy()` is called first: it may raise (refuse at once) or return
    (then this waits for the lock). The system drops the lock when its process ends, however it ends,
    so a lock left by a killed process never blocks the next one; the file itself stays (removing it
    would race with a process about to take it).
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = False
        except BlockingIOError:
            busy = True
        if busy:  # outside the except: an error raised by on_busy carries no BlockingIOError context
            if on_busy is not None:
                on_busy()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (another user's counts; a non-PID does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OSError, OverflowError):  # OverflowError: not a PID
        return False
    return True


def _last_write(path: Path) -> float:
    latest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, names in os.walk(path):
            for name in dirs + names:
                try:
                    latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    pass
    return latest


def _bytes_of(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(os.lstat(os.path.join(root, n)).st_size for root, _, names in os.walk(path) for n in names)
    return path.lstat().st_size


def _temporaries_in(folder: Path, prefix: str = TEMPORARY_PREFIX) -> list:
    """[(path, bytes)] of the temporaries in `folder` not owned by this process."""
    found = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return found
    for entry in entries:
        match = _OWNER.match(entry.name[len(prefix) :]) if entry.name.startswith(prefix) else None
        if match and int(match.group(1)) != os.getpid():
            try:
                found.append((entry, _bytes_of(entry)))
            except OSError:
                pass
    return found


def remove_stale_temporaries(
    folder, prefix: str = TEMPORARY_PREFIX, once: bool = True, stale_seconds: float = STALE_SECONDS
) -> list:
    """Removes the temporary files and folders of killed runs from `folder`; returns their paths.

    A temporary is an entry named `<prefix>[<kind>-]<pid>-...` (what `temporary_path`, the pixel
    cache and the feature store write); it is stale when its process is not running on this machine
    and nothing in it was written for `stale_seconds` (a process on another machine sharing the
    folder keeps writing its own). Prints one line to stderr when it removes something. With `once`,
    a folder is cleaned at most once per process (at the first use of a cache).
    """
    folder = Path(folder)
    if once:
        if (str(folder), prefix) in _CLEANED:
            return []
        _CLEANED.add((str(folder), prefix))
    removed, freed = [], 0
    now = time.time()
    for path, size in _temporaries_in(folder, prefix):
        pid = int(_OWNER.match(path.name[len(prefix) :]).group(1))
        try:
            if pid_alive(pid) or now - _last_write(path) < stale_seconds:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue  # gone already (another process cleaned it) or not ours to remove
        removed.append(path)
        freed += size
    if removed:
        names = ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        print(
            f"pattlite: removed {len(removed)} temporary file(s)/folder(s) left by interrupted runs in "
            f"{folder} ({_size(freed)}): {names}",
            file=sys.stderr,
        )
    return removed
