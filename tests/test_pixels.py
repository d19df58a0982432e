"""Pixel cache: decoding of image files / CSV / .npy sources, resizing, grayscale to RGB, the on-disk
memory-mapped cache (served without decoding the sources again, keyed by size and by the sources'
fingerprint), unreadable images, repaired and edited sources read again."""

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pattlite.data import pixels
from pattlite.data.errors import DatasetFormatError
from pattlite.data.pixels import UnreadableImagesError, cache_info, load_pixels

FER_CSV = Path(__file__).parent / "fixtures" / "fer2013" / "fer2013.csv"


def make_manifest(paths, rows=None, dataset="unit"):
    rows = [-1] * len(paths) if rows is None else rows
    manifest = pd.DataFrame(
        {
            "split": "train",
            "label": "anger",
            "y": 0,
            "path": [str(p) for p in paths],
            "row": rows,
            "image_id": [f"{Path(p).name}:{r}" for p, r in zip(paths, rows)],
        }
    )
    manifest.attrs.update(dataset=dataset, classes=("anger",), synthetic=False, source="test")
    return manifest


def resized(array, size):
    return np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR))


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (30, 20), dtype=np.uint8)
    rgb = rng.integers(0, 256, (25, 25, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (12, 12), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full((25, 25), 128, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(deep).save(tmp_path / "deep.png")
    return tmp_path, gray, rgb, deep


def test_image_files_shapes_modes_and_resize(image_files, tmp_path):
    folder, gray, rgb, deep = image_files
    names = ["gray.png", "rgb.png", "rgba.png", "deep.png"]
    manifest = make_manifest([folder / n for n in names])
    out = load_pixels(manifest, 16, progress=False, cache_dir=tmp_path / "cache")
    assert isinstance(out, np.memmap) and out.dtype == np.uint8 and out.shape == (4, 16, 16, 3)
    assert not out.flags.writeable
    # Grayscale is replicated into 3 identical channels; RGB keeps its channels; both resized bilinearly.
    assert (out[0] == resized(gray, 16)[:, :, None]).all()
    assert (out[1] == resized(rgb, 16)).all() and (out[2] == out[1]).all()  # alpha dropped
    # 16-bit PNG scaled to 8 bits (65535 -> 255), not clipped.
    expected_deep = resized(np.clip(np.rint(deep / 257.0), 0, 255).astype(np.uint8), 16)
    assert np.abs(out[3, :, :, 0].astype(int) - expected_deep.astype(int)).max() <= 1
    assert out[3].max() > 200


def test_second_call_is_served_from_cache_and_keyed_by_size(image_files, tmp_path, monkeypatch):
    folder, *_ = image_files
    manifest = make_manifest([folder / "gray.png", folder / "rgb.png"])
    cache = tmp_path / "cache"
    first = np.array(load_pixels(manifest, 12, progress=False, cache_dir=cache))

    def refuse(*args):
        raise AssertionError("source decoded again")

    monkeypatch.setattr(pixels, "_decode_image_file", refuse)
    second = load_pixels(manifest, 12, progress=False, cache_dir=cache)
    assert np.array_equal(first, second)
    # Another size is another cache, which needs the sources.
    with pytest.raises(AssertionError, match="decoded again"):
        load_pixels(manifest, 13, progress=False, cache_dir=cache)
    info = cache_info(cache)
    assert list(info["size"]) == [12] and list(info["rows"]) == [2] and info["dataset"].iloc[0] == "unit"
    assert not list((cache / "pixels").glob(".*tmp*")), "temporary files left behind"
    # The key follows the manifest content: the same files under another image_id are another cache.
    renamed = manifest.copy()
    renamed.attrs = dict(manifest.attrs)
    renamed["image_id"] = ["a", "b"]
    assert pixels.cache_key(renamed, 12) != pixels.cache_key(manifest, 12)
    assert pixels.cache_key(manifest, 12) == pixels.cache_key(manifest.copy(), 12)


def write_fer_csv(path, images, usage="Training"):
    lines = ["emotion,pixels,Usage"]
    for i, image in enumerate(images):
        lines.append(f"{i % 7},{' '.join(str(v) for v in image.ravel())},{usage}")
    path.write_text("\n".join(lines) + "\n")


def test_csv_container_rows_read_in_one_pass(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 48, 48), dtype=np.uint8)
    csv_path = tmp_path / "fer2013.csv"
    write_fer_csv(csv_path, images)
    opened = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(pixels, "open", counting_open, raising=False)
    # Out of order and repeated rows; row 1 and 2 unrequested.
    manifest = make_manifest([csv_path] * 4, rows=[4, 0, 3, 0])
    out = load_pixels(manifest, 48, progress=False, cache_dir=tmp_path / "cache")
    assert opened == [str(csv_path)]
    for position, row in enumerate([4, 0, 3, 0]):
        assert (out[position] == images[row][:, :, None]).all()
    small = load_pixels(manifest, 24, progress=False, cache_dir=tmp_path / "cache")
    assert (small[0, :, :, 1] == resized(images[4], 24)).all()


def test_csv_bad_row_names_line_and_missing_rows(tmp_path):
    rng = np.random.default_rng(2)
    csv_path = tmp_path / "fer2013.csv"
    write_fer_csv(csv_path, rng.integers(0, 256, (3, 48, 48), dtype=np.uint8))
    lines = csv_path.read_text().splitlines()
    lines[2] = "1,1 2 3,Training"  # data row 1: 3 values, not a square image
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UnreadableImagesError, match=r"fer2013\.csv \(row 1\): line 3: 'pixels' holds 3 values"):
        load_pixels(make_manifest([csv_path] * 2, rows=[0, 1]), 8, progress=False, cache_dir=tmp_path)
    with pytest.raises(DatasetFormatError, match="asks for data row 7, but the file has 3 data rows"):
        load_pixels(make_manifest([csv_path], rows=[7]), 8, progress=False, cache_dir=tmp_path)
    no_pixels = tmp_path / "other.csv"
    no_pixels.write_text("emotion,Usage\n0,Training\n")
    with pytest.raises(DatasetFormatError, match=r"other\.csv, line 1: .*'pixels' column"):
        load_pixels(make_manifest([no_pixels], rows=[0]), 8, progress=False, cache_dir=tmp_path)
    # Only the first manifest left a cache (recording its unreadable row); malformed files leave none.
    info = cache_info(tmp_path)
    assert len(info) == 1 and info["unreadable"].iloc[0] == 1 and info["rows"].iloc[0] == 1
    assert not list((tmp_path / "pixels").glob(".*"))


def test_real_fer2013_sample_through_its_manifest(tmp_path):
    from pattlite.data import load_manifest

    manifest = load_manifest("fer2013", FER_CSV.parent)
    out = load_pixels(manifest, 48, progress=False, cache_dir=tmp_path)
    raw = pd.read_csv(FER_CSV)
    assert out.shape == (len(raw), 48, 48, 3)
    for position in (0, len(raw) // 2, len(raw) - 1):
        expected = np.array(raw["pixels"][manifest["row"].iloc[position]].split(), np.uint8).reshape(48, 48)
        assert (out[position] == expected[:, :, None]).all()


def test_npy_container(tmp_path):
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 256, (4, 10, 10, 3), dtype=np.uint8)
    np.save(tmp_path / "stack.npy", stack)
    out = load_pixels(
        make_manifest([tmp_path / "stack.npy"] * 2, rows=[3, 1]), 10, progress=False, cache_dir=tmp_path / "cache"
    )
    assert (out[0] == stack[3]).all() and (out[1] == stack[1]).all()
    with pytest.raises(DatasetFormatError, match=r"stack\.npy: .*asks for row 4, but the array has 4 rows"):
        load_pixels(make_manifest([tmp_path / "stack.npy"], rows=[4]), 10, progress=False, cache_dir=tmp_path / "cache")


def test_synthetic_manifest_pixels(tmp_path):
    from pattlite.data.synthetic import load_synthetic_manifest

    manifest = load_synthetic_manifest(
        tmp_path / "synthetic", image_size=24, n_train=7, n_val=0, n_test=7, progress=False
    )
    out = load_pixels(manifest, 20, progress=False, cache_dir=tmp_path / "cache")
    source = np.load(manifest["path"].iloc[0])
    assert out.shape == (14, 20, 20, 3)
    assert (out[5] == resized(source[5], 20)).all()
    assert cache_info(tmp_path / "cache")["dataset"].tolist() == ["synthetic"]


@pytest.fixture
def with_corrupt(image_files):
    folder, gray, rgb, _ = image_files
    (folder / "garbage.png").write_bytes(b"not an image at all")
    data = (folder / "rgb.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    names = ["gray.png", "garbage.png", "rgb.png", "truncated.png", "missing.png"]
    return folder, make_manifest([folder / n for n in names]), gray, rgb


def test_unreadable_images_are_named(with_corrupt, tmp_path):
    folder, manifest, *_ = with_corrupt
    with pytest.raises(UnreadableImagesError) as caught:
        load_pixels(manifest, 8, progress=False, cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert isinstance(caught.value, DatasetFormatError)
    assert "3 of 5 images cannot be read" in message and "skip_unreadable=True" in message
    for name in ("garbage.png", "truncated.png", "missing.png"):
        assert str(folder / name) in message
    assert str(folder / "gray.png") not in message
    assert [item[0] for item in caught.value.unreadable] == [1, 3, 4]


def test_skip_unreadable_returns_kept_rows_and_warns(with_corrupt, tmp_path):
    folder, manifest, gray, rgb = with_corrupt
    manifest.index = [10, 11, 12, 13, 14]
    for attempt in range(2):  # building, then from the cache: same result, same warning
        with pytest.warns(UserWarning, match=r"skipped 3 unreadable image\(s\) of 5") as record:
            out, kept = load_pixels(manifest, 8, progress=False, cache_dir=tmp_path / "cache", skip_unreadable=True)
        assert str(folder / "truncated.png") in str(record[0].message)
        assert list(kept.index) == [10, 12] and kept.attrs["dataset"] == "unit"
        assert out.shape == (2, 8, 8, 3)
        assert (out[0] == resized(gray, 8)[:, :, None]).all() and (out[1] == resized(rgb, 8)).all()
    # Without the option the same cache still refuses, naming the files.
    with pytest.raises(UnreadableImagesError, match="garbage.png"):
        load_pixels(manifest, 8, progress=False, cache_dir=tmp_path / "cache")
    # A clean manifest in skip mode returns itself, with no warning.
    clean = make_manifest([folder / "gray.png"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, kept = load_pixels(clean, 8, progress=False, cache_dir=tmp_path / "cache", skip_unreadable=True)
    assert len(out) == len(kept) == 1


def bump_mtime(path, seconds=5):
    """An edit seconds later (file systems stamp modification times in ticks of a few milliseconds)."""
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 10**9))


def test_repaired_images_are_read_again(with_corrupt, tmp_path):
    folder, manifest, gray, rgb = with_corrupt
    cache = tmp_path / "cache"
    with pytest.raises(UnreadableImagesError, match="3 of 5"):
        load_pixels(manifest, 8, progress=False, cache_dir=cache)
    good = (folder / "rgb.png").read_bytes()
    for name in ("garbage.png", "truncated.png", "missing.png"):  # repaired, or put in place
        (folder / name).write_bytes(good)
    out = load_pixels(manifest, 8, progress=False, cache_dir=cache)
    assert out.shape == (5, 8, 8, 3) and all((out[i] == resized(rgb, 8)).all() for i in (1, 2, 3, 4))
    assert len(cache_info(cache)) == 2  # the old cache stays (its key no longer matches anything)


def test_csv_fixed_row_and_edited_pixels_are_read_again(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    csv_path = tmp_path / "fer2013.csv"
    write_fer_csv(csv_path, images)
    good = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(good[:2] + ["1,1 2 3,Training"] + good[3:]) + "\n")
    manifest = make_manifest([csv_path] * 3, rows=[0, 1, 2])
    with pytest.raises(UnreadableImagesError, match="holds 3 values"):
        load_pixels(manifest, 48, progress=False, cache_dir=tmp_path)
    csv_path.write_text("\n".join(good) + "\n")  # the bad row fixed
    assert (load_pixels(manifest, 48, progress=False, cache_dir=tmp_path)[1] == images[1][:, :, None]).all()
    # Pixels changed in place, same file size: swap two rows' pixels.
    swapped = good[:]
    swapped[1], swapped[2] = good[1][:2] + good[2][2:], good[2][:2] + good[1][2:]
    csv_path.write_text("\n".join(swapped) + "\n")
    assert csv_path.stat().st_size == len("\n".join(good) + "\n")
    bump_mtime(csv_path)
    edited = load_pixels(manifest, 48, progress=False, cache_dir=tmp_path)
    assert (edited[0] == images[1][:, :, None]).all() and (edited[1] == images[0][:, :, None]).all()


def test_bad_arguments():
    manifest = make_manifest(["x.png"])
    with pytest.raises(ValueError, match="size must be a positive integer"):
        load_pixels(manifest, 0, progress=False)
    without_name = manifest.copy()
    without_name.attrs = {}
    with pytest.raises(ValueError, match=r"attrs\['dataset'\]"):
        load_pixels(without_name, 8, progress=False)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['row'\]"):
        load_pixels(manifest.drop(columns=["row"]), 8, progress=False)


def test_cache_is_built_on_disk_not_in_memory(tmp_path):
    """A full FERPlus at 120 px is 1.5 GB: the cache must be written row by row into a memory map, so
    building it never holds a second copy of the array. Traced peak memory stays far below its size."""
    import tracemalloc

    n, side = 1200, 48
    source = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", source)
    del source
    manifest = make_manifest([tmp_path / "images.npy"] * n, rows=list(range(n)), dataset="memory")
    output_bytes = n * 120 * 120 * 3  # 52 MB
    tracemalloc.start()
    try:
        array = load_pixels(manifest, 120, progress=False, cache_dir=tmp_path / "cache")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert array.shape == (n, 120, 120, 3) and isinstance(array, np.memmap)
    assert peak < output_bytes / 4, f"peak {peak / 1e6:.1f} MB while building a {output_bytes / 1e6:.1f} MB cache"
