"""Data fingerprints: a cheap digest of the files a dataset is read from.

Results and caches must never outlive the data they came from. Every file is identified by its path,
its size and its modification time in nanoseconds: `os.stat` only, never the contents, so a 300 MB
`fer2013.csv` costs one system call and 36,000 PNG files about 0.2 s. Any edit, repair, copy or
replacement of a file changes its modification time (and usually its size), so the digest changes.
What it cannot see: an edit that keeps the size and puts the old modification time back (`touch -r`,
some sync tools), or two writes within one tick of the file system's clock (a few milliseconds on
Linux). Delete the cache or pass `--force` / `force=True` after such an edit.

Two users, one function (`fingerprint_files`):

- `dataset_identity(dataset, root, **options)`: the root a real dataset is read from and the digest of
  every file under it (plus the files its reader reads from elsewhere: FERPlus' `fer2013.csv` at the
  FER2013 root or the `fer2013_csv` option, the RAN lists of `subsets_dir` / `$PATTLITE_SUBSETS_DIR`).
  Whole folders, not the list a reader picks from them, so the identity is known before the (slow)
  reading, e.g. to decide whether an experiment's result file is still valid. A file added to the root
  that no reader uses changes it too: at worst a needless retraining, never a stale result.
  `load_manifest` puts it in `df.attrs["data"]`; `pattlite.experiments` makes it part of an
  experiment's key and records it in each result file.
- the pixel cache (`pattlite.data.pixels.cache_key`) digests exactly the image and container files of
  the manifest rows it decodes, so a repaired or edited image is decoded again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pattlite import config
from pattlite.data.errors import DatasetNotFoundError
from pattlite.data.subsets import resolve_subsets_dir


def file_signatures(paths, relative_to=None) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of each file, sorted by name; names relative to `relative_to` when inside it.

    A path that does not exist gets size and mtime -1 (the reader reports it; the digest still differs
    from the one of an existing file).
    """
    base = Path(relative_to) if relative_to is not None else None
    signatures = []
    for path in {str(p) for p in paths}:
        try:
            stat = os.stat(path)  # follows symbolic links: the file's content is what matters
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        name = path
        if base is not None:
            try:
                name = Path(path).relative_to(base).as_posix()
            except ValueError:
                pass
        signatures.append((name, int(size), int(mtime)))
    return sorted(signatures)


def fingerprint_files(paths, relative_to=None) -> str:
    """16 hex digits of SHA-256 over the `file_signatures` of `paths`."""
    return _digest(file_signatures(paths, relative_to))


def _digest(signatures) -> str:
    digest = hashlib.sha256()
    for name, size, mtime in signatures:
        digest.update(f"{name}\x1f{size}\x1f{mtime}\x1e".encode())
    return digest.hexdigest()[:16]


def files_under(folder) -> list[str]:
    """Every file below `folder` (symbolic links followed, each real folder visited once)."""
    out, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        out.extend(os.path.join(dirpath, name) for name in filenames)
    return out


def dataset_files(dataset: str, root, **options) -> list[str]:
    """The files a real dataset's reader may read: everything under `root` (or `root` itself when it is
    a file, as FER2013 accepts), plus the files it reads from outside the root."""
    root = Path(root)
    files = [str(root)] if root.is_file() else files_under(root) if root.is_dir() else []
    extras = []
    if dataset == "ferplus":
        explicit = options.get("fer2013_csv")
        if explicit is not None:
            extras.append(Path(explicit))
        elif not (root / "fer2013.csv").exists():
            extras.append(config.dataset_root("fer2013") / "fer2013.csv")
    if dataset in ("ferplus", "rafdb"):
        try:
            lists = resolve_subsets_dir(root, options.get("subsets_dir"))
        except DatasetNotFoundError:  # the reader raises it, naming the folder
            lists = None
        if lists is not None:
            extras.append(lists)
    for extra in extras:
        if extra.is_file():
            files.append(str(extra))
        elif extra.is_dir() and not _inside(extra, root):
            files.extend(files_under(extra))
    return files


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def dataset_identity(dataset: str, root=None, **options) -> dict:
    """{"root", "fingerprint", "files", "bytes"} of a real dataset (see the module docstring).

    `root` defaults as in `load_manifest`. A missing root gives fingerprint None (the reader raises
    `DatasetNotFoundError` when the data are read).
    """
    resolved = config.dataset_root(dataset, root).expanduser().resolve()
    if not resolved.exists():
        return {"root": str(resolved), "fingerprint": None, "files": 0, "bytes": 0}
    files = dataset_files(dataset, resolved, **options)
    relative_to = resolved if resolved.is_dir() else resolved.parent
    signatures = file_signatures(files, relative_to)
    return {"root": str(resolved), "fingerprint": _digest(signatures),
            "files": len(signatures), "bytes": int(sum(max(size, 0) for _, size, _ in signatures))}
