"""Cache files never give numbers once damaged: the pixel cache and the feature shards are checked
against the digest written after them (zeroed halves and truncations are refused, naming the file to
delete); a full disk is an error naming the file, not a SIGBUS; Ctrl-C and SIGTERM during an
extraction or a model conversion surface as KeyboardInterrupt with no temporary left; temporaries of
killed runs are removed at the next start. A stand-in extractor keeps these tests fast (no backbone)."""

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from pattlite import features as F
from pattlite import files
from pattlite.data.pixels import load_pixels
from pattlite.files import DamagedCacheError, NoSpaceError

LAYER = "conv_dw_9_relu"


def make_manifest(folder, n=6, side=10):
    rng = np.random.default_rng(0)
    np.save(folder / "stack.npy", rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8))
    manifest = pd.DataFrame(
        {
            "split": "train",
            "label": "anger",
            "y": 0,
            "path": str(folder / "stack.npy"),
            "row": range(n),
            "image_id": [f"i{i}" for i in range(n)],
        }
    )
    manifest.attrs.update(dataset="unit", classes=("anger",), synthetic=False, source="test")
    return manifest


class StandIn:
    """A deterministic extractor with the interface of the real ones; `on_batch(i)` runs before batch i."""

    def __init__(self, on_batch=None):
        self.calls, self.on_batch = 0, on_batch

    def predict_on_batch(self, batch):
        if self.on_batch:
            self.on_batch(self.calls)
        self.calls += 1
        values = np.asarray(batch, np.float32).reshape(len(batch), 10, 10, 3)[:, ::2, ::2, :2] / 255
        return [values.astype(np.float16)]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """backbone_features on a stand-in extractor (TensorFlow-backend path, in this process)."""
    import keras

    monkeypatch.setattr(keras.config, "backend", lambda: "tensorflow")
    extractor = StandIn()
    monkeypatch.setattr(F, "make_extractor", lambda *args, **kwargs: extractor)
    manifest = make_manifest(tmp_path)
    weights = tmp_path / "stand-in.weights.h5"
    weights.write_bytes(b"weights")

    def run(**options):
        return F.backbone_features(
            manifest,
            10,
            weights,
            cut_layers=(LAYER,),
            batch_size=2,
            progress=False,
            cache_dir=tmp_path / "features",
            engine="tensorflow",
            pixels=np.load(tmp_path / "stack.npy"),
            **options,
        )[LAYER]

    run.extractor, run.folder = extractor, tmp_path / "features"
    return run


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".tmp-"))


def zero_second_half(path):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(bytes(size - size // 2))
    assert path.stat().st_size == size


def test_zeroed_feature_file_is_refused_naming_the_shard(store):
    first = np.asarray(store())
    assert np.asarray(store()).tolist() == first.tolist()  # read back, checked, same values
    (shard,) = store.folder.glob("*/shard-*")
    zero_second_half(shard / f"{LAYER}.npy")
    with pytest.raises(DamagedCacheError, match="does not match its digest") as caught:
        store()
    assert str(shard) in str(caught.value) and "rm -r" in str(caught.value)
    # Deleting the folder, as the message says, rebuilds it with the same numbers.
    import shutil

    shutil.rmtree(shard)
    np.testing.assert_array_equal(np.asarray(store()), first)


def test_truncated_or_undigested_shard_files_are_named(store):
    store()
    (shard,) = store.folder.glob("*/shard-*")
    hashes = shard / "hashes.npy"
    os.truncate(hashes, hashes.stat().st_size - 5)
    with pytest.raises(DamagedCacheError, match="the file is truncated or was changed") as caught:
        store()
    assert str(hashes) in str(caught.value)
    (shard / "digest.json").unlink()
    with pytest.raises(DamagedCacheError, match="digest.json is missing"):
        store()


def test_damaged_pixel_cache_is_refused(tmp_path):
    manifest = make_manifest(tmp_path, n=40, side=32)
    cache = tmp_path / "cache"
    good = np.array(load_pixels(manifest, 32, progress=False, cache_dir=cache))
    (array,) = (cache / "pixels").glob("*.npy")
    zero_second_half(array)
    with pytest.raises(DamagedCacheError, match="does not match its digest") as caught:
        load_pixels(manifest, 32, progress=False, cache_dir=cache)
    assert str(array) in str(caught.value) and str(array.with_suffix(".json")) in str(caught.value)
    os.truncate(array, 1000)
    with pytest.raises(DamagedCacheError, match="the file is truncated or was changed"):
        load_pixels(manifest, 32, progress=False, cache_dir=cache)
    array.with_suffix(".json").write_text("{")
    with pytest.raises(DamagedCacheError, match="cannot be read"):
        load_pixels(manifest, 32, progress=False, cache_dir=cache)
    array.unlink()  # as the message says: the next call decodes the images again
    np.testing.assert_array_equal(load_pixels(manifest, 32, progress=False, cache_dir=cache), good)


def test_full_disk_names_the_file_and_leaves_no_temporary(store, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(NoSpaceError, match="PATTLITE_CACHE_DIR") as caught:
        store()
    assert f"{LAYER}.npy" in str(caught.value) and "free at least" in str(caught.value)
    assert caught.value.errno == errno.ENOSPC
    assert leftovers(store.folder) == [] and not list(store.folder.glob("*/shard-*"))
    with pytest.raises(NoSpaceError, match="stack.npy|unit_10px"):
        load_pixels(make_manifest(tmp_path), 10, progress=False, cache_dir=tmp_path / "cache")
    assert leftovers(tmp_path / "cache") == []

    monkeypatch.undo()
    from pathlib import Path

    def write_fails(self, data):
        with open(self, "wb") as f:
            f.write(data[:1])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", write_fails)
    with pytest.raises(NoSpaceError, match="result.json"):
        files.write_atomic(tmp_path / "out" / "result.json", "{}")
    assert os.listdir(tmp_path / "out") == []


def test_interrupted_extraction_leaves_nothing(store, monkeypatch):
    def stop(batch):
        if batch == 1:
            raise KeyboardInterrupt

    store.extractor.on_batch = stop
    with pytest.raises(KeyboardInterrupt):
        store()
    assert leftovers(store.folder) == [] and not list(store.folder.glob("*/shard-*"))


def test_sigterm_during_extraction_is_an_interrupt(store, monkeypatch):
    """With no SIGTERM handler the process would end at once, leaving its temporary shard."""
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        store.extractor.on_batch = lambda batch: batch == 1 and os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            store()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
    assert leftovers(store.folder) == []


def test_interrupt_inside_the_openvino_conversion_is_not_turned_into_a_failure(monkeypatch, tmp_path):
    """OpenVINO's converter catches the KeyboardInterrupt raised in it and reports a conversion error."""
    import tempfile
    import types

    seen = {}

    def convert_model(path):
        seen["folder"] = os.path.dirname(path)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
        except BaseException as error:
            raise RuntimeError("OpConversionFailure: Check 'is_conversion_successful' failed") from error

    class KerasModel:
        outputs = [None]

        def export(self, path, **options):
            os.makedirs(path)

    monkeypatch.setitem(sys.modules, "openvino", types.SimpleNamespace(convert_model=convert_model))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        started = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            F.OpenVinoExtractor(KerasModel())
        assert time.perf_counter() - started < 4  # stopped at once, not after the conversion
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen["folder"].startswith(str(tmp_path / f"pattlite-openvino-{os.getpid()}-"))
    assert not os.path.exists(seen["folder"])


def test_stale_temporaries_of_killed_runs_are_removed_once(tmp_path, capfd):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - 2 * files.STALE_SECONDS
    stale_folder = tmp_path / f".tmp-shard-{dead.pid}-1"
    stale_folder.mkdir()
    (stale_folder / "x.npy").write_bytes(b"x" * 100)
    stale_file = tmp_path / f".tmp-{dead.pid}-result.json"
    stale_file.write_text("{")
    recent = tmp_path / f".tmp-job-{dead.pid}-2"  # its owner may be on another machine: still written
    recent.mkdir()
    live = tmp_path / f".tmp-{os.getppid()}-other.json"  # a running process's
    live.write_text("{")
    for path in (stale_folder / "x.npy", stale_folder, stale_file, live):
        os.utime(path, (old, old))
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale_folder, stale_file])
    assert recent.exists() and live.exists() and not stale_folder.exists()
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "removed 2 temporary" in err and str(tmp_path) in err
    assert files.remove_stale_temporaries(tmp_path) == []  # once per process and folder


def test_extraction_engine_is_in_the_store_key_and_cheap_to_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PATTLITE_EXTRACTION_ENGINE", "tensorflow")
    assert F.extraction_identity()["engine"] == F.extraction_identity("auto")["engine"] == "tensorflow"
    monkeypatch.delenv("PATTLITE_EXTRACTION_ENGINE")
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"w")
    assert F.feature_key(32, weights, engine="openvino") != F.feature_key(32, weights, engine="tensorflow")
    from importlib.metadata import version

    assert F.extraction_identity("tensorflow") == {"engine": "tensorflow", "version": version("tensorflow")}
    with pytest.raises(ValueError, match="onnx"):
        F.extraction_identity("onnx")
    script = (
        "import sys; from pattlite.features import extraction_identity as e; i = e(); "
        "assert i['engine'] in ('openvino', 'tensorflow') and i['version'], i; "
        "assert not {'keras', 'tensorflow', 'openvino'} & set(sys.modules), sorted(sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_exclusive_lock_refuses_or_waits_as_its_caller_says(tmp_path):
    """A held lock: an `on_busy` that raises refuses at once (its error without the BlockingIOError
    behind it); one that returns waits until the holder lets go."""
    import threading

    from pattlite.files import exclusive_lock

    path = tmp_path / ".lock"

    def refuse():
        raise RuntimeError("busy")

    calls = []
    with exclusive_lock(path):
        with pytest.raises(RuntimeError, match="busy") as refused:
            with exclusive_lock(path, on_busy=refuse):
                pass
        assert refused.value.__context__ is None

        def wait_for_it():
            with exclusive_lock(path, on_busy=lambda: calls.append("waiting")):
                calls.append("held")

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and calls == ["waiting"]  # still waiting while the lock is held
    waiter.join(timeout=5)
    assert not waiter.is_alive() and calls == ["waiting", "held"]
