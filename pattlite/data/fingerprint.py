"""Data fingerprints: which files a dataset is read from, by their stat and by their content.

Results and caches must never outlive the data they came from. Every file is identified by its path,
its size and its modification time in nanoseconds: `os.stat` only, never the contents, so a 300 MB
`fer2013.csv` costs one system call and a folder of images one per file. Any edit, repair, copy or
replacement of a file changes its modification time (and usually its size), so the digest changes.
What it cannot see: an edit that keeps the size and puts the old modification time back (`touch -r`,
some sync tools), or two writes within one tick of the file system's clock (a few milliseconds on
Linux). Delete the cache or pass `--force` / `force=True` after such an edit.

Two digests:

- the *fingerprint* (`fingerprint_files`): path, size and modification time, as above. It keys caches
  that live beside the data on one machine (the pixel cache).
- the *content digest* (`content_digest`): SHA-256 of every file's bytes, named relative to the dataset
  root, so the same files in another folder, on another machine or freshly copied give the same digest.
  It is what an experiment's key holds (`pattlite.experiments`), so that committed result files are
  reused wherever the same data are, and never for changed files. Hashing reads every byte once; the
  digest of each file is memoised by (real path, size, mtime_ns) in
  `<cache dir>/file-digests.json` and in the process, so later runs pay one `stat` per file.

Users of the fingerprint (`fingerprint_files`):

- `dataset_identity(dataset, root, **options)`: the root a real dataset is read from and the digests of
  every image and table file under it (`is_data_file`: notes, archives and hidden files are left out),
  plus the files its reader reads from elsewhere (FERPlus' `fer2013.csv` at the FER2013 root or the
  `fer2013_csv` option) and the dataset's own RAN lists (`subsets_dir` / `$PATTLITE_SUBSETS_DIR` / the
  root's `ran_challenge_lists/`). Whole folders, not the list a reader picks from them, so the identity
  is known before the (slow) reading, e.g. to decide whether an experiment's result file is still
  valid. An image or table file added to the root that no reader uses changes it too: at worst a
  needless retraining, never a stale result.
  `load_manifest` puts it in `df.attrs["data"]`; `pattlite.experiments` makes it part of an
  experiment's key and records it in each result file.
- the pixel cache (`pattlite.data.pixels.cache_key`) digests exactly the image and container files of
  the manifest rows it decodes, so a repaired or edited image is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
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


# What a dataset is made of: image and table files. Anything else under a root (notes, archives, hidden
# files such as .DS_Store) is no reader's input, so it does not change the content digest.
DATA_SUFFIXES = (".csv", ".txt", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".npz")


def is_data_file(name: str) -> bool:
    """True for an image or table file that no hidden folder holds (`DATA_SUFFIXES`)."""
    parts = Path(name).parts
    return not any(part.startswith(".") for part in parts) and Path(name).suffix.lower() in DATA_SUFFIXES


def named_dataset_files(dataset: str, root, **options) -> list[tuple[str, str]]:
    """(name, path) of each file a real dataset is read from: the image and table files under `root`
    (`is_data_file`; `root` itself when it is a file, as FER2013 accepts) named relative to it; FERPlus'
    `fer2013.csv` read from outside the root named `fer2013.csv`; and the dataset's own RAN lists
    (`pattlite.data.subsets`), wherever they are, named `ran_lists/<folder>/<file>`. The names are what
    the content digest sees, so the same files in another layout of folders digest the same."""
    from pattlite.data.subsets import list_files

    root = Path(root)
    lists = None
    if dataset in ("ferplus", "rafdb"):
        try:
            lists = resolve_subsets_dir(root, options.get("subsets_dir"))
        except DatasetNotFoundError:  # the reader raises it, naming the folder
            lists = None
    if root.is_file():
        named = [(root.name, str(root))]
    elif root.is_dir():
        named = [(Path(path).relative_to(root).as_posix(), path) for path in files_under(root)]
        named = [
            (name, path)
            for name, path in named
            if is_data_file(name) and not (lists is not None and _inside(Path(path), lists))
        ]
    else:
        named = []
    if dataset == "ferplus":
        explicit = options.get("fer2013_csv")
        extra = (
            Path(explicit)
            if explicit is not None
            else (None if (root / "fer2013.csv").exists() else config.dataset_root("fer2013") / "fer2013.csv")
        )
        if extra is not None and extra.is_file():
            named.append((extra.name, str(extra)))
    if lists is not None:
        named.extend((f"ran_lists/{name}", str(path)) for name, path in list_files(dataset, lists))
    return named


def _inside(path: Path, folder: Path) -> bool:
    for a, b in ((os.path.abspath(path), os.path.abspath(folder)), (Path(path).resolve(), Path(folder).resolve())):
        try:
            Path(a).relative_to(b)
            return True
        except ValueError:
            pass
    return False


def dataset_identity(dataset: str, root=None, content: bool = True, **options) -> dict:
    """{"root", "fingerprint", "content", "files", "bytes"} of a real dataset (see the module docstring).

    `root` defaults as in `load_manifest`. A missing root gives fingerprint and content None (the reader
    raises `DatasetNotFoundError` when the data are read). `content=False` skips the content digest
    (None), e.g. where only the stat fingerprint is needed.
    """
    resolved = config.dataset_root(dataset, root).expanduser().resolve()
    if not resolved.exists():
        return {"root": str(resolved), "fingerprint": None, "content": None, "files": 0, "bytes": 0}
    named = named_dataset_files(dataset, resolved, **options)
    relative_to = resolved if resolved.is_dir() else resolved.parent
    signatures = file_signatures([path for _, path in named], relative_to)
    return {
        "root": str(resolved),
        "fingerprint": _digest(signatures),
        "content": content_digest(named) if content else None,
        "files": len(signatures),
        "bytes": int(sum(max(size, 0) for _, size, _ in signatures)),
    }


# ---------------------------------------------------------------------------------------------------
# Content digests


DIGEST_MEMO = "file-digests.json"
_memo: dict[str, list] = {}  # real path -> [size, mtime_ns, sha256], this process
_memo_lock = threading.Lock()


def content_digest(named_files) -> str:
    """16 hex digits of SHA-256 over sorted (name, SHA-256 of the file's bytes) of (name, path) pairs.

    A missing file is digested as missing (the reader then names it). Each file's digest is memoised by
    its real path, size and modification time (`file_digest`).
    """
    memo_path = config.cache_dir() / DIGEST_MEMO
    entries = sorted((name, _file_digest(path, memo_path)) for name, path in named_files)
    _save_memo(memo_path)
    digest = hashlib.sha256()
    for name, file_hash in entries:
        digest.update(f"{name}\x1f{file_hash}\x1e".encode())
    return digest.hexdigest()[:16]


def file_digest(path, memo_dir=None) -> str:
    """SHA-256 (hex) of a file's bytes, or "missing"; memoised by (real path, size, mtime_ns) in this
    process and in `<memo_dir or cache dir>/file-digests.json`, so each file is read once per change."""
    memo_path = (Path(memo_dir) if memo_dir is not None else config.cache_dir()) / DIGEST_MEMO
    digest = _file_digest(path, memo_path)
    _save_memo(memo_path)
    return digest


_unsaved: set[str] = set()  # memo files with entries this process has not written yet


def _file_digest(path, memo_path: Path) -> str:
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError:
        return "missing"
    signature = [int(stat.st_size), int(stat.st_mtime_ns)]
    with _memo_lock:
        if str(memo_path) not in _loaded:
            _loaded.add(str(memo_path))
            for name, entry in _read_memo(memo_path).items():
                _memo.setdefault(name, entry)
        known = _memo.get(real)
    if known is not None and known[:2] == signature:
        return known[2]
    sha = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    with _memo_lock:
        _memo[real] = signature + [sha.hexdigest()]
        _unsaved.add(str(memo_path))
    return sha.hexdigest()


_loaded: set[str] = set()  # memo files already read into `_memo`


def _save_memo(memo_path: Path) -> None:
    with _memo_lock:
        if str(memo_path) in _unsaved:
            _unsaved.discard(str(memo_path))
            _write_memo(memo_path)


def _read_memo(memo_path: Path) -> dict:
    try:
        data = json.loads(memo_path.read_text())
    except (OSError, ValueError):  # absent or damaged: only a cache of digests, computed again
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 3} if isinstance(data, dict) else {}


def _write_memo(memo_path: Path) -> None:
    """Merges this process's digests into the memo file (atomically; a concurrent writer's entries that
    this one does not know are kept, and at worst recomputed later). A failed write is not an error:
    the memo only saves time."""
    from pattlite.files import write_json_atomic

    merged = {**_read_memo(memo_path), **_memo}  # caller holds _memo_lock
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(memo_path, merged)
    except OSError:
        pass
