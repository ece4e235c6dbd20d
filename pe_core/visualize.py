"""Human-readable views of samples and per-iteration series: image grids, text digests, plots.

Nothing here touches global plotting state: grids are composed with PIL, and plots draw on a
``matplotlib.figure.Figure`` bound to its own Agg canvas, so no pyplot backend is selected.
Fonts are the DejaVu files that matplotlib ships, which makes output identical across machines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image, ImageDraw, ImageFont

from pe_core.samples import Samples

# Tiles are upscaled by an integer factor (nearest neighbour) until their longer side reaches
# this many pixels: 28x28 digits become 84x84, large enough to judge stroke shapes by eye.
MIN_TILE_PX = 84
# Gap around every tile and text block, in pixels.
PAD_PX = 4

_BACKGROUND = (255, 255, 255)
_BLANK_CELL = (228, 228, 228)
_INK = (0, 0, 0)
_LABEL_FONT_PX = 14
_CAPTION_FONT_PX = 11
_TITLE_FONT_PX = 16


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    # matplotlib is imported where it is used, not with pe_core (its plotting modules take
    # ~0.6 s and ~50 MB, which a process that never plots should not pay).
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def tile_scale(height: int, width: int) -> int:
    """The integer upscaling factor ``save_image_grid`` applies to (height, width) images."""
    return max(1, math.ceil(MIN_TILE_PX / max(height, width)))


def save_image_grid(
    samples: Samples,
    path: str | Path,
    *,
    per_label: int = 10,
    title: str | None = None,
    scores: ArrayLike | None = None,
) -> None:
    """Writes a PNG grid with one row per label and up to ``per_label`` images per row.

    Layout, in pixels: an optional title strip on top (the image widens to fit a long title,
    cells stay left-aligned); each row starts with the label name,
    followed by ``per_label`` cells of ``H*s x W*s`` (``s = tile_scale(H, W)``) separated and
    surrounded by ``PAD_PX``; cells of rows with fewer samples stay light grey. Without scores,
    each row shows the label's first samples in order; with scores, its highest-scoring ones
    (ties in sample order), each captioned with its score.

    Args:
        samples: image samples, uint8 (n, H, W, C) with C = 1 (drawn grey) or 3 (RGB).
        path: where to write the PNG.
        per_label: cells per row, >= 1.
        title: optional text drawn above the grid.
        scores: optional (n,) per-sample numbers, e.g. DP vote counts of the last iteration.
    """
    if samples.images is None:
        raise ValueError("save_image_grid needs image samples; use save_text_sample for texts")
    if per_label < 1:
        raise ValueError(f"per_label must be >= 1, got {per_label}")
    if not samples.label_names:
        raise ValueError("save_image_grid needs at least one label")
    _, height, width, channels = samples.images.shape
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {channels}")
    score_values = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if score_values is not None and len(score_values) != len(samples):
        raise ValueError(f"got {len(score_values)} scores for {len(samples)} samples")

    scale = tile_scale(height, width)
    tile_w, tile_h = width * scale, height * scale
    label_font, caption_font, title_font = (
        _font(_LABEL_FONT_PX),
        _font(_CAPTION_FONT_PX),
        _font(_TITLE_FONT_PX),
    )
    label_w = 2 * PAD_PX + math.ceil(max(label_font.getlength(n) for n in samples.label_names))
    caption_h = 0 if score_values is None else _CAPTION_FONT_PX + PAD_PX
    title_h = 0 if title is None else _TITLE_FONT_PX + 2 * PAD_PX
    row_h = tile_h + caption_h + PAD_PX
    grid_w = label_w + PAD_PX + per_label * (tile_w + PAD_PX)
    title_w = 0 if title is None else 2 * PAD_PX + math.ceil(title_font.getlength(title))
    canvas = Image.new(
        "RGB",
        (max(grid_w, title_w), title_h + PAD_PX + row_h * len(samples.label_names)),
        _BACKGROUND,
    )
    draw = ImageDraw.Draw(canvas)
    if title is not None:
        draw.text((PAD_PX, PAD_PX), title, fill=_INK, font=title_font)

    for row, name in enumerate(samples.label_names):
        top = title_h + PAD_PX + row * row_h
        draw.text((PAD_PX, top + tile_h / 2), name, fill=_INK, font=label_font, anchor="lm")
        chosen = _row_indices(samples.labels, row, per_label, score_values)
        for col in range(per_label):
            left = label_w + PAD_PX + col * (tile_w + PAD_PX)
            if col >= len(chosen):
                draw.rectangle((left, top, left + tile_w - 1, top + tile_h - 1), fill=_BLANK_CELL)
                continue
            index = int(chosen[col])
            canvas.paste(_tile(samples.images[index], tile_w, tile_h), (left, top))
            if score_values is not None:
                caption = f"{score_values[index]:.3g}"
                draw.text(
                    (left + tile_w / 2, top + tile_h + PAD_PX // 2),
                    caption,
                    fill=_INK,
                    font=caption_font,
                    anchor="mt",
                )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")


def _row_indices(
    labels: NDArray[np.int64], label: int, limit: int, scores: NDArray[np.float64] | None
) -> NDArray[np.int64]:
    members = np.flatnonzero(labels == label)
    if scores is not None:
        members = members[np.argsort(-scores[members], kind="stable")]
    return members[:limit]


def _tile(image: NDArray[np.uint8], tile_w: int, tile_h: int) -> Image.Image:
    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).convert("RGB")
    return picture.resize((tile_w, tile_h), Image.Resampling.NEAREST)


def save_text_sample(
    samples: Samples, path: str | Path, *, per_label: int = 3, title: str = "Text samples"
) -> None:
    """Writes a UTF-8 markdown file with the first ``per_label`` texts of every label.

    Each label gets a section headed by its name and sample count; each text is a block quote
    (every line prefixed with ``> ``, so multi-line texts stay inside their quote).

    Args:
        samples: text samples.
        path: where to write the markdown.
        per_label: texts shown per label, >= 1.
        title: the document's top-level heading.
    """
    if samples.texts is None:
        raise ValueError("save_text_sample needs text samples; use save_image_grid for images")
    if per_label < 1:
        raise ValueError(f"per_label must be >= 1, got {per_label}")
    lines = [f"# {title}", ""]
    for label, name in enumerate(samples.label_names):
        members = np.flatnonzero(samples.labels == label)
        lines += [f"## {name} ({len(members)} samples)", ""]
        if len(members) == 0:
            lines += ["_(no samples)_", ""]
        for index in members[:per_label].tolist():
            text = samples.texts[index]
            lines += [f"> {line}".rstrip() for line in text.splitlines() or [""]]
            lines.append("")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines), encoding="utf-8", newline="\n")


def save_series_plot(
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str,
    xlabel: str = "iteration",
    ylabel: str = "value",
    first_x: int = 0,
) -> None:
    """Writes a 640x400 PNG line plot with one line per named series.

    Args:
        series: name -> values; value i is plotted at x = first_x + i. NaN leaves a gap.
        path: where to write the PNG.
        title: plot title.
        xlabel: x axis label.
        ylabel: y axis label.
        first_x: x of every series' first value (0 when population 0 is included, 1 for
            per-release diagnostics of iterations 1..T).
    """
    if not series:
        raise ValueError("save_series_plot needs at least one series")
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # see _font on the import
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, values in series.items():
        ys = np.asarray(values, dtype=np.float64)
        axes.plot(first_x + np.arange(len(ys)), ys, marker="o", markersize=3, label=name)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    # Iterations are whole numbers; matplotlib would otherwise tick at 0.5 steps on short runs.
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
