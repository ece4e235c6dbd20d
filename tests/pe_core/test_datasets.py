"""Dataset loaders, fingerprints and the synthetic writer, on tiny files made in tmp_path."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pe_core.datasets import (
    ZipLimits,
    _arrow_array,
    dataset_fingerprint,
    load_dataset,
    write_synthetic,
)
from pe_core.errors import DataError, PrivevoError
from pe_core.samples import Samples


def png_bytes(value: int, size: tuple[int, int] = (4, 3), mode: str = "L") -> bytes:
    """A solid image of ``value`` with size (width, height)."""
    color = value if mode == "L" else (value, 255 - value, value // 2)
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def make_folder(root: Path, layout: dict[str, list[int]], mode: str = "L") -> Path:
    for label, values in layout.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, value in enumerate(values):
            (root / label / f"{i:03d}.png").write_bytes(png_bytes(value, mode=mode))
    return root


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def text_samples(texts: list[str], labels: list[int], names: tuple[str, ...]) -> Samples:
    return Samples(
        ids=[f"{i:016x}" for i in range(len(texts))],
        labels=labels,
        label_names=names,
        texts=tuple(texts),
    )


# ---------------------------------------------------------------------------------------------
# Image folders


def test_image_folder_labels_ids_and_pixels(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"dog": [10, 20], "cat": [30]})
    (root / "README.txt").write_text("loose files beside class folders are ignored")
    (root / "cat" / ".DS_Store").write_bytes(b"\0junk")
    samples = load_dataset(root)
    assert samples.modality == "image"
    assert samples.label_names == ("cat", "dog")
    assert samples.ids.tolist() == ["cat/000.png", "dog/000.png", "dog/001.png"]
    assert samples.labels.tolist() == [0, 1, 1]
    assert samples.images is not None
    assert samples.images.shape == (3, 3, 4, 1)
    assert samples.images[:, 0, 0, 0].tolist() == [30, 10, 20]


def test_rgb_images_have_three_channels_and_mixed_modes_promote(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": [5]}, mode="RGB")
    (root / "b").mkdir()
    (root / "b" / "gray.png").write_bytes(png_bytes(77))
    samples = load_dataset(root)
    assert samples.images is not None
    assert samples.images.shape == (2, 3, 4, 3)
    assert samples.images[0, 0, 0].tolist() == [5, 250, 2]
    assert samples.images[1, 0, 0].tolist() == [77, 77, 77]


def test_declared_labels_set_order_and_drop_others(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": [1], "dog": [2, 3], "eel": [4]})
    # An undeclared class is never opened, so a corrupt file there does not matter.
    (root / "eel" / "broken.png").write_bytes(b"not an image")
    samples = load_dataset(root, labels=["dog", "cat", "fox"], id_prefix="p:")
    assert samples.label_names == ("dog", "cat", "fox")
    assert samples.ids.tolist() == ["p:cat/000.png", "p:dog/000.png", "p:dog/001.png"]
    assert samples.labels.tolist() == [1, 0, 0]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_dataset(tmp_path / "hollow")
    with pytest.raises(DataError, match="modality='text'"):
        load_dataset(make_folder(tmp_path / "ok", {"a": [1]}), modality="text")


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": [1]})
    (root / "a" / "bad.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DataError, match=r"bad\.png: not a readable image"):
        load_dataset(root)


def test_mixed_sizes_name_the_first_offending_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": [1, 2]})
    (root / "b").mkdir()
    (root / "b" / "big.png").write_bytes(png_bytes(3, size=(5, 5)))
    (root / "b" / "bigger.png").write_bytes(png_bytes(3, size=(6, 6)))
    with pytest.raises(DataError, match=r"big\.png: image is 5x5 pixels but .*000\.png is 4x3"):
        load_dataset(root)


def test_nested_folders_and_unknown_files_are_refused(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": [1]})
    (root / "a" / "deeper").mkdir()
    with pytest.raises(DataError, match="not subfolders"):
        load_dataset(root)
    (root / "a" / "deeper").rmdir()
    (root / "a" / "scan.tiff").write_bytes(b"II*")
    with pytest.raises(DataError, match=r"scan\.tiff: unsupported image type '\.tiff'"):
        load_dataset(root)


def test_no_record_with_a_declared_label_is_an_error(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": [1]})
    with pytest.raises(DataError, match="no record has one of the labels"):
        load_dataset(root, labels=["zebra"])


# ---------------------------------------------------------------------------------------------
# Zip archives


def test_zip_with_and_without_a_wrapping_folder(tmp_path: Path) -> None:
    members = {"b/1.png": png_bytes(9), "a/1.png": png_bytes(8), "a/2.png": png_bytes(7)}
    flat = load_dataset(make_zip(tmp_path / "flat.zip", members))
    wrapped = load_dataset(
        make_zip(
            tmp_path / "wrapped.zip",
            {f"top/{k}": v for k, v in members.items()} | {"__MACOSX/top/a/._1.png": b"x"},
        )
    )
    for samples in (flat, wrapped):
        assert samples.label_names == ("a", "b")
        assert samples.ids.tolist() == ["a/1.png", "a/2.png", "b/1.png"]
        assert samples.images is not None
        assert samples.images[:, 0, 0, 0].tolist() == [8, 7, 9]


def test_zip_with_a_single_class_keeps_it(tmp_path: Path) -> None:
    samples = load_dataset(make_zip(tmp_path / "one.zip", {"only/1.png": png_bytes(1)}))
    assert samples.label_names == ("only",)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil/1.png", r"'\.\.' are refused"),
        ("a/../../1.png", r"'\.\.' are refused"),
        ("/etc/a/1.png", "absolute member paths are refused"),
        ("C:\\a\\1.png", "absolute member paths are refused"),
        ("a\\..\\..\\1.png", r"'\.\.' are refused"),
    ],
)
def test_zip_traversal_is_refused(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a/ok.png", png_bytes(1))
        archive.writestr(zipfile.ZipInfo(name), png_bytes(2))
    with pytest.raises(DataError, match=message):
        load_dataset(path)


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    info = zipfile.ZipInfo("a/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic links are refused"):
        load_dataset(path)


def test_zip_bomb_limits(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/1.png", png_bytes(1))
        archive.writestr("a/zeros.png", b"\0" * 2_000_000)
    assert path.stat().st_size < 20_000
    with pytest.raises(DataError, match=r"would expand to 20000\d\d bytes"):
        load_dataset(path, zip_limits=ZipLimits(max_total_bytes=1_000_000))
    with pytest.raises(DataError, match="lists 2 entries, more than the limit of 1"):
        load_dataset(path, zip_limits=ZipLimits(max_members=1))


def test_zip_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    with pytest.raises(DataError, match="not a readable zip archive"):
        load_dataset(tmp_path / "junk.zip")
    deep = make_zip(tmp_path / "deep.zip", {"a/b/c/1.png": png_bytes(1), "x/1.png": b""})
    with pytest.raises(DataError, match="too deeply nested"):
        load_dataset(deep)
    empty = make_zip(tmp_path / "empty.zip", {"README": b"hi"})
    with pytest.raises(DataError, match="no images found"):
        load_dataset(empty)
    corrupt = make_zip(tmp_path / "corrupt.zip", {"a/1.png": b"garbage"})
    with pytest.raises(DataError, match=r"corrupt\.zip!a/1\.png: not a readable image"):
        load_dataset(corrupt)


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_with_label_names(tmp_path: Path) -> None:
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    np.savez(
        tmp_path / "d.npz",
        images=images,
        labels=np.array([1, 0, 1]),
        label_names=np.array(["zero", "one"]),
    )
    samples = load_dataset(tmp_path / "d.npz")
    assert samples.label_names == ("zero", "one")
    assert samples.labels.tolist() == [1, 0, 1]
    assert samples.ids.tolist() == ["0", "1", "2"]
    assert samples.images is not None
    np.testing.assert_array_equal(samples.images[..., 0], images)


def test_npz_x_y_keys_sort_integer_labels_numerically(tmp_path: Path) -> None:
    x = np.zeros((3, 2, 2, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([10, 2, 10]))
    samples = load_dataset(tmp_path / "d.npz")
    assert samples.label_names == ("2", "10")
    assert samples.labels.tolist() == [1, 0, 1]
    dropped = load_dataset(tmp_path / "d.npz", labels=["10"])
    assert dropped.ids.tolist() == ["0", "2"]
    assert dropped.labels.tolist() == [0, 0]


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "keys.npz", pixels=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DataError, match=r"it holds \['pixels'\]"):
        load_dataset(tmp_path / "keys.npz")
    np.savez(tmp_path / "float.npz", images=np.zeros((1, 2, 2)), labels=np.zeros(1, int))
    with pytest.raises(DataError, match="must be uint8"):
        load_dataset(tmp_path / "float.npz")
    np.savez(
        tmp_path / "pickled.npz",
        images=np.zeros((1, 2, 2), np.uint8),
        labels=np.zeros(1, int),
        label_names=np.array(["a", None], dtype=object),
    )
    with pytest.raises(DataError, match="without pickled objects"):
        load_dataset(tmp_path / "pickled.npz")
    np.savez(
        tmp_path / "range.npz",
        images=np.zeros((1, 2, 2), np.uint8),
        labels=np.array([3]),
        label_names=np.array(["a"]),
    )
    with pytest.raises(DataError, match=r"labels must lie in \[0, 1\)"):
        load_dataset(tmp_path / "range.npz")
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 2, 2), np.uint8), labels=np.zeros(0, int))
    with pytest.raises(DataError, match="empty"):
        load_dataset(tmp_path / "empty.npz")
    np.savez(
        tmp_path / "rgba.npz", images=np.zeros((1, 2, 2, 4), np.uint8), labels=np.zeros(1, int)
    )
    with pytest.raises(DataError, match=r"1 \(grayscale\) or 3 \(RGB\) channels"):
        load_dataset(tmp_path / "rgba.npz")


# ---------------------------------------------------------------------------------------------
# Text tables


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"body": "first", "topic": "b"}\n\n{"body": "zweite \\u00fc", "topic": 7}\n'
        '{"body": "third", "topic": "a", "extra": 1}\n',
        encoding="utf-8",
    )
    samples = load_dataset(path, text_column="body", label_column="topic")
    assert samples.modality == "text"
    assert samples.texts == ("first", "zweite ü", "third")
    assert samples.label_names == ("7", "a", "b")
    assert samples.labels.tolist() == [2, 0, 1]
    assert samples.ids.tolist() == ["0", "1", "2"]


def test_jsonl_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "oops",\n')
    with pytest.raises(DataError, match=r"d\.jsonl, line 2: not valid JSON"):
        load_dataset(path)
    path.write_text('{"text": "ok", "label": "a"}\n{"body": "x", "label": "a"}\n')
    with pytest.raises(
        DataError, match=r"line 2: no 'text' field; the record has \['body', 'label'\]"
    ):
        load_dataset(path)
    path.write_text('["text", "label"]\n')
    with pytest.raises(DataError, match="line 1: each line must be a JSON object"):
        load_dataset(path)
    path.write_text('{"text": "ok", "label": null}\n')
    with pytest.raises(DataError, match="line 1: label 'label' must be a string or an integer"):
        load_dataset(path)
    path.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        load_dataset(path)
    with pytest.raises(DataError, match="modality='image'"):
        load_dataset(path, modality="image")


def test_csv_keeps_strings_and_multiline_values(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('label,text,other\n007,"a, quoted\nline",1\nx,,2\n', encoding="utf-8")
    samples = load_dataset(path)
    assert samples.texts == ("a, quoted\nline", "")
    assert samples.label_names == ("007", "x")


def test_csv_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("sentence,label\nhello,a\n")
    with pytest.raises(
        DataError, match=r"no column 'text'; the columns are \['sentence', 'label'\]"
    ):
        load_dataset(path)


def test_parquet_text_and_declared_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["x", "y", "z"], "label": [3, 1, 3]}), path)
    samples = load_dataset(path, labels=["3"])
    assert samples.label_names == ("3",)
    assert samples.texts == ("x", "z")
    assert samples.ids.tolist() == ["0", "2"]
    with pytest.raises(DataError, match=r"no column 'topic'; the columns are \['text', 'label'\]"):
        load_dataset(path, label_column="topic")


def test_unsupported_suffix_and_bad_declarations(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_dataset(tmp_path / "d.txt")
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n')
    with pytest.raises(DataError, match="not the string"):
        load_dataset(path, labels="a")
    with pytest.raises(DataError, match="repeats a name"):
        load_dataset(path, labels=["a", "a"])


# ---------------------------------------------------------------------------------------------
# Fingerprints


def test_fingerprint_of_a_file_is_its_sha256(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(b'{"text": "x", "label": "y"}\n')
    (tmp_path / "copy.jsonl").write_bytes(a.read_bytes())
    assert dataset_fingerprint(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert dataset_fingerprint(tmp_path / "copy.jsonl") == dataset_fingerprint(a)
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "z", "label": "y"}\n')
    assert dataset_fingerprint(tmp_path / "b.jsonl") != dataset_fingerprint(a)
    with pytest.raises(DataError, match="no such file"):
        dataset_fingerprint(tmp_path / "missing")


def test_fingerprint_of_a_folder_covers_paths_and_bytes(tmp_path: Path) -> None:
    one = make_folder(tmp_path / "one", {"a": [1, 2], "b": [3]})
    two = make_folder(tmp_path / "two", {"a": [1, 2], "b": [3]})
    assert dataset_fingerprint(one) == dataset_fingerprint(two)
    (two / "b" / "000.png").rename(two / "b" / "renamed.png")
    assert dataset_fingerprint(one) != dataset_fingerprint(two)
    three = make_folder(tmp_path / "three", {"a": [1, 2], "b": [4]})
    assert dataset_fingerprint(one) != dataset_fingerprint(three)


# ---------------------------------------------------------------------------------------------
# Writer


def test_write_synthetic_images_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    samples = Samples(
        ids=[f"{i:016x}" for i in range(5)],
        labels=[2, 0, 2, 0, 0],
        label_names=("cat", "unused", "dog"),
        images=images,
        params={"size": np.arange(5, dtype=np.int64), "pos": np.ones((5, 2))},
    )
    out = tmp_path / "out"
    write_synthetic(samples, out)
    assert sorted(p.name for p in out.iterdir()) == ["images", "labels.csv", "synthetic.parquet"]

    folder = load_dataset(out / "images")
    assert folder.label_names == ("cat", "dog")
    for sample_id, label, image in zip(folder.ids, folder.labels, folder.images, strict=True):
        original = samples.ids.tolist().index(sample_id.split("/")[1].removesuffix(".png"))
        np.testing.assert_array_equal(image, images[original])
        assert folder.label_names[label] == samples.label_names[samples.labels[original]]

    table = load_dataset(out)
    assert table.label_names == samples.label_names
    assert table.labels.tolist() == samples.labels.tolist()
    np.testing.assert_array_equal(table.images, images)

    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,label"
    assert rows[1] == f"images/dog/{samples.ids[0]}.png,dog"
    stored = pq.read_table(out / "synthetic.parquet").to_pydict()
    assert stored["id"] == samples.ids.tolist()
    assert stored["size"] == list(range(5))
    assert stored["pos"] == [[1.0, 1.0]] * 5


def test_write_synthetic_grayscale_round_trip(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
    samples = Samples(ids=["a", "b"], labels=[0, 0], label_names=("7",), images=images)
    write_synthetic(samples, tmp_path / "out")
    loaded = load_dataset(tmp_path / "out" / "images")
    np.testing.assert_array_equal(loaded.images, images)


def test_write_synthetic_texts_round_trip(tmp_path: Path) -> None:
    samples = text_samples(["héllo", "two\nlines", "x"], [1, 0, 1], ("neg", "pos"))
    out = tmp_path / "out"
    write_synthetic(samples, out)
    for path in (out / "texts.jsonl", out):
        loaded = load_dataset(path, labels=["neg", "pos"])
        assert loaded.texts == samples.texts
        assert loaded.labels.tolist() == [1, 0, 1]
    first = json.loads((out / "texts.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert first == {"text": "héllo", "label": "pos"}


def test_write_synthetic_makes_unsafe_names_safe_and_unique(tmp_path: Path) -> None:
    samples = Samples(
        ids=["../x", "../x", "same"],
        labels=[0, 0, 1],
        label_names=("a/b", ".hidden"),
        images=np.zeros((3, 2, 2, 1), dtype=np.uint8),
    )
    write_synthetic(samples, tmp_path / "out")
    files = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")
    )
    assert files == ["images/_hidden/same.png", "images/a_b/_._x-1.png", "images/a_b/_._x.png"]
    clash = Samples(
        ids=["p", "q"],
        labels=[0, 1],
        label_names=("a/b", "a_b"),
        images=np.zeros((2, 2, 2, 1), dtype=np.uint8),
    )
    with pytest.raises(PrivevoError, match="distinct folder names"):
        write_synthetic(clash, tmp_path / "clash")


def test_write_synthetic_refuses_existing_output_and_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = text_samples(["a"], [0], ("l",))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(PrivevoError, match="already exists"):
        write_synthetic(samples, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic(samples, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_write_synthetic_refuses_param_named_like_a_fixed_column(tmp_path: Path) -> None:
    samples = Samples(
        ids=["a"], labels=[0], label_names=("l",), texts=("t",), params={"label": np.array([1])}
    )
    with pytest.raises(ValueError, match="clash"):
        write_synthetic(samples, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_npz_declaring_a_huge_array_is_refused_before_loading(tmp_path):
    path = tmp_path / "bomb.npz"
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": (10**7, 28, 28, 1)}
    )
    labels = io.BytesIO()
    np.save(labels, np.zeros(3, dtype=np.int64))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", buffer.getvalue())  # a header only: no pixel data
        archive.writestr("labels.npy", labels.getvalue())
    with pytest.raises(DataError, match="declare 7,840,000,024 bytes"):
        load_dataset(path)


def test_deeply_nested_json_line_is_a_data_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match="nested too deeply"):
        load_dataset(path, modality="text")


# ---------------------------------------------------------------------------------------------
# Users


def test_every_format_with_a_user_column_names_each_kept_records_user(tmp_path: Path) -> None:
    rows = [("a", "x", "u1"), ("b", "y", "u2"), ("c", "x", "u1"), ("d", "z", "u3")]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        "\n\n".join(json.dumps({"text": t, "label": lab, "who": u}) for t, lab, u in rows) + "\n"
    )
    csv = tmp_path / "t.csv"
    csv.write_text("text,label,who\n" + "".join(f"{t},{lab},{u}\n" for t, lab, u in rows))
    parquet = tmp_path / "t.parquet"
    columns = {
        "text": [r[0] for r in rows],
        "label": [r[1] for r in rows],
        "who": [r[2] for r in rows],
    }
    pq.write_table(pa.table(columns), parquet)
    npz = tmp_path / "i.npz"
    np.savez(
        npz,
        images=np.zeros((4, 2, 2), np.uint8),
        labels=np.array([0, 1, 0, 2]),
        who=np.array([7, 8, 7, 9]),
    )
    for path in (jsonl, csv, parquet):
        samples = load_dataset(path, labels=["x", "y"], user_column="who")
        assert samples.users is not None and samples.users.tolist() == ["u1", "u2", "u1"]
    samples = load_dataset(npz, user_column="who", labels=["0", "2"])
    assert samples.users is not None and samples.users.tolist() == ["7", "7", "9"]
    assert load_dataset(npz).users is None


def test_a_user_column_that_cannot_serve_is_a_clear_error(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "f", {"a": [1, 2]})
    with pytest.raises(DataError, match="image folders and zips name no users"):
        load_dataset(folder, user_column="who")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "a", "label": "x", "who": "u"}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(DataError, match="record 1: user 'who' must be a non-empty string"):
        load_dataset(jsonl, user_column="who")
    npz = tmp_path / "i.npz"
    np.savez(npz, images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(DataError, match="no 'who' array to name the users"):
        load_dataset(npz, user_column="who")
    np.savez(npz, images=np.zeros((2, 2, 2), np.uint8), labels=np.array([0, 1]), who=np.arange(3))
    with pytest.raises(DataError, match=r"one user per image \(2\), got int64 \(3,\)"):
        load_dataset(npz, user_column="who")


@pytest.mark.parametrize(
    "values",
    [
        ["a", "bb", "", "ünï ✓"],
        [b"\x89PNG", b"", b"x" * 300],
        np.array(["7", "10", "é"]),
        np.array([1, -2, 2**62], dtype=np.int64),
        np.array([0.5, np.nan, -np.inf]),
        # pa.array's own cases: other dtypes, objects, nested lists, mixed, empty, surrogates
        np.array([1, 2], dtype=np.int32),
        np.array([True, False]),
        [[1, 2], [3]],
        ["a", None],
        ["a", b"b"],
        [],
        ["\udce9"],
    ],
)
def test_arrow_arrays_are_the_ones_pa_array_makes(values: object) -> None:
    try:
        expected = pa.array(values)
    except (pa.ArrowException, UnicodeError) as exc:
        with pytest.raises(type(exc)):
            _arrow_array(values)
        return
    got = _arrow_array(values)
    assert got.type == expected.type and got.null_count == expected.null_count
    assert repr(got.to_pylist()) == repr(expected.to_pylist())  # repr: NaN equals NaN


def test_write_synthetic_writes_the_parquet_pa_table_writes_without_loading_pandas(
    tmp_path: Path,
) -> None:
    # In a fresh interpreter: this one may have imported pandas already.
    script = f"""
import sys
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pathlib import Path
from pe_core.datasets import write_synthetic
from pe_core.samples import Samples

samples = Samples(
    ids=np.array(["a1", "b2", "c3"]),
    labels=np.array([0, 1, 1]),
    label_names=("zero", "one"),
    images=np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 1),
    params={{"font": np.array([3, 1, 2]), "rotation": np.array([0.5, -1.0, 2.0]),
            "text": np.array(["0", "1", "1"])}},
)
out = Path({str(tmp_path / "out")!r})
write_synthetic(samples, out)
assert "pandas" not in sys.modules
written = pq.read_table(out / "synthetic.parquet")
# The table as pa.table builds it from the same columns (the PNG bytes are PIL's).
columns = {{"id": samples.ids.tolist(), "label": ["zero", "one", "one"]}}
columns["image_png"] = written["image_png"].to_pylist()
columns.update(samples.params)
pa_table = pa.table(columns).replace_schema_metadata(written.schema.metadata)
pq.write_table(pa_table, {str(tmp_path / "ref.parquet")!r})
print(written.schema)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "synthetic.parquet").read_bytes() == (
        tmp_path / "ref.parquet"
    ).read_bytes()
