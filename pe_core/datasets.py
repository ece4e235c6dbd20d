"""Dataset files in and out: loaders to ``Samples``, fingerprints, and the synthetic-data writer.

Formats ``load_dataset`` reads, chosen by the path:

- a folder with one subfolder per class holding images (``cat/001.png``); label = folder name;
- a ``.zip`` of the same layout, optionally under one top-level folder, read in memory;
- ``.npz`` with ``images`` (or ``x``) uint8 (n, H, W[, C]), ``labels`` (or ``y``) integers and
  optional ``label_names``;
- ``.jsonl``, ``.csv`` or ``.parquet`` tables with a text column and a label column (a parquet
  file with an ``image_png`` column of encoded images, as ``write_synthetic`` makes, loads as
  images);
- a folder written by ``write_synthetic`` (it holds ``synthetic.parquet``).

The label set is public by declaration: records whose label is outside the declared set are
dropped without any report of how many, since that count depends on the private data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pe_core.errors import DataError, PrivevoError
from pe_core.samples import Modality, Samples

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".webp"})
TABLE_SUFFIXES = frozenset({".csv", ".jsonl", ".parquet"})
IMAGE_COLUMN = "image_png"
"""Parquet column of encoded image bytes (PNG from ``write_synthetic``; any supported format)."""
SYNTHETIC_PARQUET = "synthetic.parquet"
LABEL_NAMES_KEY = b"privevo.label_names"
"""Parquet schema metadata key holding the JSON list of label names, so that labels without
samples survive a round trip."""

# Decoders limited to the formats we document: PIL's rarer plugins are a larger attack surface.
_PIL_FORMATS = ("BMP", "JPEG", "PNG", "WEBP")
_GRAY_MODES = frozenset({"1", "L", "LA"})
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class ZipLimits:
    """Caps applied to a zip archive before any member is decompressed (zip-bomb guard).

    Attributes:
        max_members: most entries (files and folders) the archive may list.
        max_total_bytes: most bytes all members may declare uncompressed, in total. Reads stop
            at each member's declared size, so the declaration bounds what is decompressed.
    """

    max_members: int = 500_000
    max_total_bytes: int = 4 * 1024**3


DEFAULT_ZIP_LIMITS = ZipLimits()


@dataclass(frozen=True)
class _ImageRecord:
    id: str
    label: str
    source: str
    read: Callable[[], bytes]


def load_dataset(
    path: str | os.PathLike[str],
    *,
    modality: Modality | None = None,
    text_column: str = "text",
    label_column: str = "label",
    labels: Sequence[str] | None = None,
    user_column: str | None = None,
    id_prefix: str = "",
    zip_limits: ZipLimits = DEFAULT_ZIP_LIMITS,
) -> Samples:
    """Loads a labelled image or text dataset.

    Args:
        path: a class-per-folder image directory, ``.zip``, ``.npz``, ``.jsonl``, ``.csv`` or
            ``.parquet`` file (see the module docstring).
        modality: "image" or "text"; inferred from the format when None, checked when given.
        text_column: the text field of table formats.
        label_column: the label field of table formats; its values are read as strings.
        labels: the declared public label set, in index order. Records with another label are
            dropped silently (their number is private). When None, the label set is the sorted
            distinct folder names or column values (or the names stored in the file).
        user_column: the field (tables) or array (``.npz``) naming each record's user, for
            user-level privacy; its values are read as strings. Image folders and zips have
            none.
        id_prefix: prepended to every record id (ids are ``<label>/<file>`` for image folders
            and zips, the 0-based record number for npz and tables).
        zip_limits: caps for zip archives.

    Returns:
        The records, images as uint8 (n, H, W, C) with C 1 (grayscale) or 3 (RGB).

    Raises:
        DataError: the file is missing, unreadable, empty or has the wrong schema; the message
            names the file and says how to fix it.
    """
    samples = _load(Path(path), modality, text_column, label_column, labels, id_prefix, zip_limits)
    if user_column is None:
        return samples
    return _with_users(_source_file(Path(path)), samples, user_column, id_prefix)


def _source_file(source: Path) -> Path:
    if source.is_dir() and (source / SYNTHETIC_PARQUET).is_file():
        return source / SYNTHETIC_PARQUET
    return source


def _load(
    source: Path,
    modality: Modality | None,
    text_column: str,
    label_column: str,
    labels: Sequence[str] | None,
    id_prefix: str,
    zip_limits: ZipLimits,
) -> Samples:
    declared = _declared_labels(labels)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder; check the path")
    if source.is_dir():
        if (source / SYNTHETIC_PARQUET).is_file():
            source = source / SYNTHETIC_PARQUET
        else:
            _expect_modality(source, "image", modality, "an image folder")
            return _load_image_folder(source, declared, id_prefix)
    suffix = source.suffix.lower()
    if suffix == ".zip":
        _expect_modality(source, "image", modality, "a zip archive")
        return _load_zip(source, declared, id_prefix, zip_limits)
    if suffix == ".npz":
        _expect_modality(source, "image", modality, "an .npz file")
        return _load_npz(source, declared, id_prefix, zip_limits)
    if suffix == ".parquet":
        return _load_parquet(source, modality, text_column, label_column, declared, id_prefix)
    if suffix in (".jsonl", ".csv"):
        _expect_modality(source, "text", modality, f"a {suffix} file")
        reader = _read_jsonl if suffix == ".jsonl" else _read_csv
        label_values, texts = reader(source, text_column, label_column)
        return _text_samples(source, label_values, texts, declared, id_prefix)
    known = ", ".join(sorted(TABLE_SUFFIXES | {".npz", ".zip"}))
    raise DataError(
        f"{source}: unsupported file type {suffix or '(none)'!r}; give an image folder or a file "
        f"ending in one of {known}"
    )


def _declared_labels(labels: Sequence[str] | None) -> tuple[str, ...] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        raise DataError(f"labels must be a list of label names, not the string {labels!r}")
    declared = tuple(str(name) for name in labels)
    if not declared:
        raise DataError("labels is empty; declare at least one label name or pass None")
    if len(set(declared)) != len(declared):
        raise DataError(f"labels {list(declared)} repeats a name; list each label once")
    return declared


def _expect_modality(path: Path, found: Modality, asked: Modality | None, what: str) -> None:
    if asked is not None and asked != found:
        raise DataError(
            f"{path}: {what} holds {found}s but modality={asked!r} was asked; "
            f"pass modality={found!r} or a {asked} dataset"
        )


def _label_codes(
    values: Sequence[str], declared: tuple[str, ...] | None, stored: tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], NDArray[np.int64]]:
    """Maps label strings to indices into the label set; -1 marks a record to drop."""
    names = declared or stored or tuple(sorted(set(values)))
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index.get(v, -1) for v in values], dtype=np.int64)


def _require_kept(path: Path, codes: NDArray[np.int64], names: tuple[str, ...]) -> None:
    # Only the zero case is reported: a run on no records is meaningless, and the message
    # carries no count.
    if not (codes >= 0).any():
        raise DataError(
            f"{path}: no record has one of the labels {list(names)}; check the declared label "
            f"names against the data"
        )


def _ids(prefix: str, raw: Sequence[str]) -> NDArray[np.str_]:
    return np.array([prefix + r for r in raw], dtype=np.str_)


# ---------------------------------------------------------------------------------------------
# Images


def _is_hidden(part: str) -> bool:
    # Finder and Explorer droppings (.DS_Store, ._x.png, __MACOSX/) are not records.
    return part.startswith(".") or part == "__MACOSX"


def _load_image_folder(root: Path, declared: tuple[str, ...] | None, prefix: str) -> Samples:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not _is_hidden(d.name))
    if not class_dirs:
        raise DataError(
            f"{root}: no class subfolders found; an image dataset folder needs one subfolder "
            f"per class, e.g. {root / 'cat' / '001.png'}"
        )
    wanted = set(declared) if declared is not None else None
    records: list[_ImageRecord] = []
    for class_dir in class_dirs:
        if wanted is not None and class_dir.name not in wanted:
            continue
        for file in sorted(class_dir.iterdir()):
            if _is_hidden(file.name):
                continue
            if file.is_dir():
                raise DataError(
                    f"{file}: class folders must hold image files, not subfolders; "
                    f"move the images up to {class_dir} or point at {file.parent} instead"
                )
            _check_image_suffix(file.name, str(file))
            records.append(
                _ImageRecord(
                    f"{class_dir.name}/{file.name}", class_dir.name, str(file), file.read_bytes
                )
            )
    return _image_samples(root, records, declared, prefix)


def _check_image_suffix(name: str, source: str) -> None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"{source}: unsupported image type {suffix or '(none)'!r}; convert it to one of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} or remove it"
        )


def _load_zip(
    path: Path, declared: tuple[str, ...] | None, prefix: str, limits: ZipLimits
) -> Samples:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip archive ({exc}); re-create the zip") from None
    with archive:
        members = _safe_members(path, archive, limits)
        files = [
            (parts, info)
            for parts, info in members
            if not info.is_dir() and not any(_is_hidden(p) for p in parts)
        ]
        files = sorted(_strip_wrapper(files), key=lambda item: item[0])
        wanted = set(declared) if declared is not None else None
        records: list[_ImageRecord] = []
        for parts, info in files:
            if len(parts) == 1:
                continue  # a loose file beside the class folders (README, licence)
            source = f"{path}!{info.filename}"
            if len(parts) > 2:
                raise DataError(
                    f"{source}: too deeply nested; the zip must hold <class>/<image> "
                    f"(optionally under one top-level folder)"
                )
            if wanted is not None and parts[0] not in wanted:
                continue
            _check_image_suffix(parts[1], source)
            records.append(
                _ImageRecord(
                    "/".join(parts), parts[0], source, _member_reader(archive, info, source)
                )
            )
        if not records and declared is None:
            raise DataError(
                f"{path}: no images found; the zip must hold <class>/<image> files such as "
                f"cat/001.png"
            )
        return _image_samples(path, records, declared, prefix)


def _strip_wrapper(
    files: list[tuple[tuple[str, ...], zipfile.ZipInfo]],
) -> list[tuple[tuple[str, ...], zipfile.ZipInfo]]:
    """Drops one top-level folder that wraps every file, unless it is itself the only class."""
    wrapped = bool(files) and len({parts[0] for parts, _ in files}) == 1
    if not wrapped or any(len(parts) == 1 for parts, _ in files):
        return files
    if any(len(parts) == 2 and _is_image_name(parts[1]) for parts, _ in files):
        return files
    return [(parts[1:], info) for parts, info in files]


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _safe_members(
    path: Path, archive: zipfile.ZipFile, limits: ZipLimits
) -> list[tuple[tuple[str, ...], zipfile.ZipInfo]]:
    """Checks every member before anything is decompressed; returns (path parts, info)."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise DataError(
            f"{path}: the zip lists {len(infos)} entries, more than the limit of "
            f"{limits.max_members}; split the dataset or raise the limit"
        )
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise DataError(
            f"{path}: the zip would expand to {total} bytes, more than the limit of "
            f"{limits.max_total_bytes} (a zip bomb, or a dataset too large to load at once)"
        )
    members = []
    for info in infos:
        name = info.filename.replace("\\", "/")
        source = f"{path}!{info.filename}"
        if name.startswith("/") or re.match(r"[A-Za-z]:", name):
            raise DataError(
                f"{source}: absolute member paths are refused; re-create the zip "
                f"with relative paths"
            )
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise DataError(
                f"{source}: member paths with '..' are refused; re-create the zip "
                f"without parent-folder references"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{source}: symbolic links are refused; zip the image files themselves")
        if info.flag_bits & 0x1:
            raise DataError(
                f"{source}: encrypted members are not supported; zip without a password"
            )
        if parts:
            members.append((parts, info))
    return members


def _member_reader(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str
) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return archive.read(info)
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, OSError, EOFError) as exc:
            raise DataError(f"{source}: cannot decompress ({exc}); re-create the zip") from None

    return read


def _given(blob: bytes) -> Callable[[], bytes]:
    return lambda: blob


def _decode_image(data: bytes, source: str) -> NDArray[np.uint8]:
    """Decodes to (H, W, 1) for grayscale modes and (H, W, 3) for everything else."""
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as image:
            image.load()
            converted = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        Image.DecompressionBombError,
    ) as exc:
        raise DataError(
            f"{source}: not a readable image ({exc}); re-save it as PNG or remove it"
        ) from None
    array = np.asarray(converted, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _image_samples(
    path: Path, records: list[_ImageRecord], declared: tuple[str, ...] | None, prefix: str
) -> Samples:
    if not records and declared is None:
        raise DataError(f"{path}: no images found; add image files under class subfolders")
    names, codes = _label_codes([r.label for r in records], declared)
    _require_kept(path, codes, names)
    kept = [r for r, code in zip(records, codes.tolist(), strict=True) if code >= 0]
    arrays = [_decode_image(r.read(), r.source) for r in kept]
    height, width = arrays[0].shape[:2]
    for record, array in zip(kept, arrays, strict=True):
        if array.shape[:2] != (height, width):
            raise DataError(
                f"{record.source}: image is {array.shape[1]}x{array.shape[0]} pixels but "
                f"{kept[0].source} is {width}x{height}; all images of a dataset must share one "
                f"size, so resize them first"
            )
    # Mixed grayscale and colour: promote grayscale to RGB, which loses nothing.
    channels = max(a.shape[2] for a in arrays)
    images = np.stack([np.repeat(a, channels // a.shape[2], axis=2) for a in arrays])
    return Samples(
        ids=_ids(prefix, [r.id for r in kept]),
        labels=codes[codes >= 0],
        label_names=names,
        images=images,
    )


def _npz_declared_bytes(path: Path) -> int:
    """Bytes the arrays of an .npz declare in their headers, read without loading them: a tiny
    file can declare a huge array, which np.load would then try to allocate."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(handle)
            total += int(np.prod(shape, dtype=object)) * dtype.itemsize
    return total


def _load_npz(
    path: Path, declared: tuple[str, ...] | None, prefix: str, limits: ZipLimits
) -> Samples:
    try:
        declared_bytes = _npz_declared_bytes(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable .npz ({exc}); save it with numpy.savez and plain arrays"
        ) from None
    if declared_bytes > limits.max_total_bytes:
        raise DataError(
            f"{path}: its arrays declare {declared_bytes:,} bytes, over the limit of "
            f"{limits.max_total_bytes:,}; split the dataset or raise the limit"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable .npz without pickled objects ({exc}); save it with "
            f"numpy.savez and plain arrays (label_names as a str array)"
        ) from None
    image_key = next((k for k in ("images", "x") if k in arrays), None)
    label_key = next((k for k in ("labels", "y") if k in arrays), None)
    if image_key is None or label_key is None:
        raise DataError(
            f"{path}: needs arrays 'images' (or 'x') and 'labels' (or 'y'); it holds "
            f"{sorted(arrays) or 'no arrays'}"
        )
    images, raw_labels = arrays[image_key], arrays[label_key]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{path}: {image_key!r} must be uint8 of shape (n, H, W) or (n, H, W, C), got "
            f"{images.dtype} {images.shape}; convert pixel values to uint8 in [0, 255]"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[3] not in (1, 3):
        raise DataError(
            f"{path}: images must have 1 (grayscale) or 3 (RGB) channels, got {images.shape[3]}"
        )
    if raw_labels.ndim != 1 or raw_labels.dtype.kind not in "iu" or len(raw_labels) != len(images):
        raise DataError(
            f"{path}: {label_key!r} must be a 1-d integer array with one label per image, got "
            f"{raw_labels.dtype} {raw_labels.shape} for {len(images)} images"
        )
    if not len(images):
        raise DataError(f"{path}: the dataset is empty; it holds no images")
    stored = None
    if "label_names" in arrays:
        stored = tuple(str(name) for name in arrays["label_names"].reshape(-1).tolist())
        if raw_labels.min() < 0 or raw_labels.max() >= len(stored):
            raise DataError(
                f"{path}: labels must lie in [0, {len(stored)}) to index label_names; fix the "
                f"labels or the label_names array"
            )
        values = [stored[i] for i in raw_labels.tolist()]
    else:
        values = [str(i) for i in raw_labels.tolist()]
        stored = tuple(str(i) for i in sorted(set(raw_labels.tolist())))
    names, codes = _label_codes(values, declared, stored)
    _require_kept(path, codes, names)
    keep = codes >= 0
    return Samples(
        ids=_ids(prefix, [str(i) for i in np.flatnonzero(keep).tolist()]),
        labels=codes[keep],
        label_names=names,
        images=images[keep],
    )


# ---------------------------------------------------------------------------------------------
# Tables


def _text_samples(
    path: Path,
    label_values: list[str],
    texts: list[str],
    declared: tuple[str, ...] | None,
    prefix: str,
    stored: tuple[str, ...] | None = None,
) -> Samples:
    if not texts:
        raise DataError(f"{path}: the dataset is empty; it holds no records")
    names, codes = _label_codes(label_values, declared, stored)
    _require_kept(path, codes, names)
    keep = np.flatnonzero(codes >= 0)
    return Samples(
        ids=_ids(prefix, [str(i) for i in keep.tolist()]),
        labels=codes[keep],
        label_names=names,
        texts=tuple(texts[i] for i in keep.tolist()),
    )


def _label_string(value: Any, where: str, label_column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(
            f"{where}: label {label_column!r} must be a string or an integer, got {value!r}"
        )
    return str(value)


def _read_jsonl(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    label_values: list[str] = []
    texts: list[str] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}, line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: not UTF-8 text; re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except RecursionError:
                raise DataError(f"{where}: JSON nested too deeply to be a record") from None
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object "
                    f'such as {{"{text_column}": "...", "{label_column}": "..."}}'
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: each line must be a JSON object, got {record!r:.60}")
            for column in (text_column, label_column):
                if column not in record:
                    raise DataError(
                        f"{where}: no {column!r} field; the record has {sorted(record)}. Pass "
                        f"text_column/label_column to name the right fields"
                    )
            text = record[text_column]
            if not isinstance(text, str):
                raise DataError(f"{where}: {text_column!r} must be a string, got {text!r:.60}")
            label_values.append(_label_string(record[label_column], where, label_column))
            texts.append(text)
    return label_values, texts


def _read_csv(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    import pyarrow as pa
    from pyarrow import csv as pa_csv

    try:
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={text_column: pa.string(), label_column: pa.string()},
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({exc})") from None
    return _table_columns(path, table.column_names, table.to_pydict(), text_column, label_column)


def _table_columns(
    path: Path,
    present: list[str],
    data: dict[str, list[Any]],
    text_column: str,
    label_column: str,
) -> tuple[list[str], list[str]]:
    _require_columns(path, present, (text_column, label_column))
    label_values, texts = [], []
    for row, (text, label) in enumerate(zip(data[text_column], data[label_column], strict=True)):
        where = f"{path}, row {row}"
        if not isinstance(text, str):
            raise DataError(f"{where}: {text_column!r} must be a string, got {text!r:.60}")
        label_values.append(_label_string(label, where, label_column))
        texts.append(text)
    return label_values, texts


def _require_columns(path: Path, present: Sequence[str], needed: Sequence[str]) -> None:
    for column in needed:
        if column not in present:
            raise DataError(
                f"{path}: no column {column!r}; the columns are {list(present)}. Pass "
                f"text_column/label_column to name the right ones"
            )


def _load_parquet(
    path: Path,
    modality: Modality | None,
    text_column: str,
    label_column: str,
    declared: tuple[str, ...] | None,
    prefix: str,
) -> Samples:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    present = schema.names
    if modality is None:
        modality = "image" if IMAGE_COLUMN in present and text_column not in present else "text"
    content_column = IMAGE_COLUMN if modality == "image" else text_column
    _require_columns(path, present, (content_column, label_column))
    stored = None
    metadata = schema.metadata or {}
    if LABEL_NAMES_KEY in metadata:
        stored = tuple(str(n) for n in json.loads(metadata[LABEL_NAMES_KEY].decode("utf-8")))
    try:
        data = pq.read_table(path, columns=[content_column, label_column]).to_pydict()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read columns of the parquet file ({exc})") from None
    if modality == "text":
        label_values, texts = _table_columns(path, present, data, text_column, label_column)
        return _text_samples(path, label_values, texts, declared, prefix, stored)
    records: list[_ImageRecord] = []
    for row, (blob, label) in enumerate(zip(data[IMAGE_COLUMN], data[label_column], strict=True)):
        where = f"{path}, row {row}"
        if not isinstance(blob, bytes):
            raise DataError(f"{where}: {IMAGE_COLUMN!r} must hold encoded image bytes")
        label_name = _label_string(label, where, label_column)
        records.append(_ImageRecord(str(row), label_name, where, _given(blob)))
    if not records:
        raise DataError(f"{path}: the dataset is empty; it holds no records")
    if declared is None and stored is not None:
        declared = stored
    return _image_samples(path, records, declared, prefix)


# ---------------------------------------------------------------------------------------------
# Users


def _with_users(source: Path, samples: Samples, column: str, prefix: str) -> Samples:
    """``samples`` with the user of each record, read from ``column`` of the same file.

    npz and table records have the 0-based record number as id, so each kept record finds its
    row; records dropped for their label are dropped here too.
    """
    suffix = source.suffix.lower()
    if source.is_dir() or suffix == ".zip":
        raise DataError(
            f"{source}: image folders and zips name no users; for user-level privacy give an "
            f".npz with a {column!r} array, or a table with a {column!r} column"
        )
    values = _user_values(source, suffix, column)
    users = []
    for record_id in samples.ids.tolist():
        row = int(record_id[len(prefix) :])
        value = values[row] if row < len(values) else None
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise DataError(
                f"{source}, record {row}: user {column!r} must be a non-empty string or an "
                f"integer, got {value!r:.60}"
            )
        users.append(str(value))
    return samples.with_users(users)


def _user_values(source: Path, suffix: str, column: str) -> list[Any]:
    """The column's value of every record, in record order (blank jsonl lines are no record)."""
    if suffix == ".npz":
        with np.load(source, allow_pickle=False) as archive:
            if column not in archive.files:
                raise DataError(
                    f"{source}: no {column!r} array to name the users; it holds "
                    f"{sorted(archive.files)}"
                )
            array = archive[column]
            images = len(archive[next(k for k in ("images", "x") if k in archive.files)])
        if array.ndim != 1 or array.dtype.kind not in "iuU" or len(array) != images:
            raise DataError(
                f"{source}: {column!r} must be a 1-d array of integers or strings, one user per "
                f"image ({images}), got {array.dtype} {array.shape}"
            )
        return list(array.tolist())
    if suffix == ".jsonl":
        with source.open("rb") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        return [record.get(column) for record in records]
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import csv as pa_csv

    if suffix == ".csv":
        table = pa_csv.read_csv(
            source,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={column: pa.string()}, strings_can_be_null=False
            ),
        )
    else:
        table = pq.read_table(source)
    if column not in table.column_names:
        raise DataError(
            f"{source}: no column {column!r} to name the users; the columns are "
            f"{table.column_names}"
        )
    return list(table.column(column).to_pylist())


# ---------------------------------------------------------------------------------------------
# Fingerprints


def dataset_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a dataset's bytes, to refuse evaluation data equal to private data.

    For a file it is the digest of its bytes (``sha256sum``); for a folder, of every regular
    file's relative POSIX path and bytes in sorted path order, each length-prefixed so that no
    two layouts hash the same stream. It detects byte-identical copies only, not shared records.
    """
    source = Path(path)
    digest = hashlib.sha256()
    if source.is_file():
        _hash_file(digest, source)
    elif source.is_dir():
        for relative, file in _walk_files(source):
            name = relative.encode("utf-8")
            digest.update(len(name).to_bytes(8, "little") + name)
            digest.update(file.stat().st_size.to_bytes(8, "little"))
            _hash_file(digest, file)
    else:
        raise DataError(f"{source}: no such file or folder; check the path")
    return digest.hexdigest()


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            file = Path(folder) / name
            if file.is_file():
                found.append((file.relative_to(root).as_posix(), file))
    yield from sorted(found)


def _hash_file(digest: Any, file: Path) -> None:
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


# ---------------------------------------------------------------------------------------------
# Writer


def write_synthetic(samples: Samples, out_dir: Path) -> None:
    """Writes a synthetic dataset to ``out_dir``, which must not exist or be empty.

    Layout: images as ``images/<label>/<id>.png`` plus ``labels.csv`` (columns ``file,label``,
    file relative to ``out_dir``); texts as ``texts.jsonl`` (``{"text", "label"}``); both also
    as ``synthetic.parquet`` (``id``, ``label``, ``image_png`` or ``text``, and one column per
    generator parameter), with the label names in its schema metadata. Labels are names.

    Everything is written to a temporary sibling folder that is renamed into place last, so a
    crash leaves no half-written ``out_dir``. Label names and ids are made file-name safe (other
    characters become ``_``; a repeated name gets a ``-<k>`` suffix), so ``labels.csv`` and the
    parquet file, not the file names, are the record of each sample's id.

    Raises:
        PrivevoError: ``out_dir`` exists and is not empty, or two label names map to one
            folder name.
        ValueError: a parameter column is named like a fixed column.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PrivevoError(f"{out_dir} already exists; remove it or choose a new output folder")
    content = IMAGE_COLUMN if samples.images is not None else "text"
    clash = {"id", "label", content} & set(samples.params)
    if clash:
        raise ValueError(f"parameter columns {sorted(clash)} clash with fixed output columns")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent)
    )
    try:
        label_names = [samples.label_names[i] for i in samples.labels.tolist()]
        columns: dict[str, Any] = {"id": samples.ids.tolist(), "label": label_names}
        if samples.images is not None:
            columns[content] = _write_images(samples, label_names, staging)
        else:
            _write_texts(samples, label_names, staging)
            columns[content] = list(samples.texts or ())
        for key, value in samples.params.items():
            columns[key] = value.tolist() if value.ndim > 1 or value.dtype == object else value
        table = pa.Table.from_arrays(
            [_arrow_array(values) for values in columns.values()], names=list(columns)
        ).replace_schema_metadata(
            {LABEL_NAMES_KEY: json.dumps(list(samples.label_names)).encode("utf-8")}
        )
        pq.write_table(table, staging / SYNTHETIC_PARQUET)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _arrow_array(values: Any) -> Any:
    """The Arrow array ``pa.array(values)`` makes, built from its buffers where that is plain:
    lists of ``str`` or ``bytes``, numpy ``str``, ``int64`` and ``float64`` arrays.

    ``pa.array`` imports pandas the first time it runs, to ask whether its input is a pandas
    object (0.3 s of CPU and ~50 MB, a twentieth of a 2,000-sample drawtext run), and nothing
    written here is one. Any other input (nested lists, objects, other dtypes, text that is
    not UTF-8, over 2 GiB of it) goes to ``pa.array``. Tested to write the same parquet file.
    """
    import pyarrow as pa

    if isinstance(values, np.ndarray) and values.ndim == 1:
        if values.dtype in (np.int64, np.float64):
            arrow_type = pa.int64() if values.dtype == np.int64 else pa.float64()
            buffer = pa.py_buffer(np.ascontiguousarray(values))
            return pa.Array.from_buffers(arrow_type, len(values), [None, buffer])
        if values.dtype.kind == "U":
            values = values.tolist()
    if not isinstance(values, list) or not values:
        return pa.array(values)
    if all(type(v) is bytes for v in values):
        arrow_type, blobs = pa.binary(), values
    elif all(type(v) is str for v in values):
        try:
            arrow_type, blobs = pa.string(), [v.encode("utf-8") for v in values]
        except UnicodeEncodeError:  # lone surrogates: pa.array says what is wrong
            return pa.array(values)
    else:
        return pa.array(values)
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(blob) for blob in blobs], out=offsets[1:])
    if offsets[-1] >= 2**31:  # past int32 offsets, pa.array picks its own layout
        return pa.array(values)
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(blobs))]
    return pa.Array.from_buffers(arrow_type, len(blobs), buffers)


def _safe_name(name: str) -> str:
    safe = _SAFE_NAME.sub("_", name)
    return "_" + safe[1:] if not safe or safe.startswith(".") else safe


def _write_images(samples: Samples, label_names: list[str], staging: Path) -> list[bytes]:
    assert samples.images is not None
    folders = {name: _safe_name(name) for name in samples.label_names}
    if len(set(folders.values())) != len(folders):
        raise PrivevoError(
            f"label names {list(samples.label_names)} do not map to distinct folder names; "
            f"rename labels that differ only in characters other than letters, digits, . _ -"
        )
    used: set[str] = set()
    made: set[Path] = set()  # one mkdir per label folder, not one per image
    encoded: list[bytes] = []
    with (staging / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label"])
        for sample_id, label, image in zip(
            samples.ids.tolist(), label_names, samples.images, strict=True
        ):
            stem = base = f"{folders[label]}/{_safe_name(sample_id)}"
            repeat = 0
            while stem in used:
                repeat += 1
                stem = f"{base}-{repeat}"
            used.add(stem)
            buffer = io.BytesIO()
            Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, "PNG")
            blob = buffer.getvalue()
            relative = f"images/{stem}.png"
            target = staging / relative
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            target.write_bytes(blob)
            writer.writerow([relative, label])
            encoded.append(blob)
    return encoded


def _write_texts(samples: Samples, label_names: list[str], staging: Path) -> None:
    with (staging / "texts.jsonl").open("w", encoding="utf-8") as handle:
        for text, label in zip(samples.texts or (), label_names, strict=True):
            handle.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")
