"""Sim-PE's text-rendering simulator: label texts drawn with local fonts (MNIST-like digits).

The simulator of Sim-PE (arXiv:2502.05505, Sec. 4) draws the label's text (e.g. the digit "7")
with a font from a pool, at some size, stroke width, rotation and position. Its variation API
perturbs these parameters, not the pixels, so every sample carries its parameters in
``Samples.params``:

============  =======  ==============================================================
column        dtype    meaning
============  =======  ==============================================================
font          int64    index into :attr:`DrawText.fonts`
font_size     int64    FreeType size in px (the em height)
stroke_width  int64    outline thickness in px (PIL ``stroke_width``)
rotation      float64  counter-clockwise rotation in degrees, about the ink centre
text          str      the string drawn
offset_x      float64  ink-centre offset from the canvas centre in px, +x to the right
offset_y      float64  ink-centre offset from the canvas centre in px, +y downwards
shear         float64  slant: x moves by -shear * y (y downwards), so > 0 leans right
scale_x       float64  width factor of the glyph (1 keeps its shape)
============  =======  ==============================================================

Rendering is a pure function of these columns: each (font, size, stroke, text) glyph is
rasterised once by FreeType (through PIL) into an anti-aliased mask cropped to its ink, and
every image is then one bilinear affine warp of that mask, done for a whole batch in numpy.
Rasterising glyphs is most of a PE run's time on this API (a 2,000-sample run with lookahead 8
meets ~28,000 distinct glyphs), so it asks FreeType for the glyph's coverage bitmap directly
and keeps no font object between calls (see :meth:`GlyphRenderer._add_missing`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from pe_core.apis.base import check_variation_input, square_grayscale_refusals
from pe_core.apis.fonts import FontInfo, discover_fonts
from pe_core.errors import PrivevoError
from pe_core.samples import DataShape, Modality, Samples, new_ids

PARAM_COLUMNS = (
    "font",
    "font_size",
    "stroke_width",
    "rotation",
    "text",
    "offset_x",
    "offset_y",
    "shear",
    "scale_x",
)

# Zero border around each cached mask: bilinear taps that fall outside the ink then read zeros,
# so index clamping alone handles every out-of-glyph coordinate.
_PAD = 2
# Images warped per numpy pass: big enough to amortise per-call overhead, small enough that the
# (chunk, H, W) float32 temporaries stay in cache.
_CHUNK = 128


@dataclass(frozen=True)
class DrawTextSettings:
    """Parameter ranges and the degree schedule of :class:`DrawText`, in pixels and degrees.

    ``random`` draws each parameter uniformly from its range. ``variation`` at degree ``d`` in
    [0, 1] (the degree schedule, linear in ``d`` like Sim-PE's integer step sizes):

    * re-draws the font with probability ``d * font_redraw_prob`` and the text (among the
      label's texts) with probability ``d * text_redraw_prob``;
    * adds ``round(u * d * size_step)`` to the font size and ``round(u * d * stroke_step)`` to
      the stroke width, ``u * d * rotation_step`` degrees to the rotation,
      ``u * d * offset_step`` px to each offset, ``u * d * shear_step`` to the shear and
      ``u * d * scale_x_step`` to the width factor, with an independent ``u ~ U(-1, 1)`` each;
    * clips every parameter back into its range.

    The random draws do not depend on ``d``, so one seed gives coupled variations whose size
    grows with the degree, and ``d = 0`` keeps every parameter.
    """

    image_size: int
    font_size_range: tuple[int, int]
    stroke_width_range: tuple[int, int]
    max_rotation: float
    max_offset: float
    max_shear: float
    scale_x_range: tuple[float, float]
    font_redraw_prob: float
    text_redraw_prob: float
    size_step: float
    stroke_step: float
    rotation_step: float
    offset_step: float
    shear_step: float
    scale_x_step: float

    def __post_init__(self) -> None:
        if self.image_size < 4:
            raise ValueError(f"image_size must be >= 4 px, got {self.image_size}")
        for name in ("font_size_range", "stroke_width_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi or (name == "font_size_range" and lo < 1):
                raise ValueError(f"{name} must be an ordered pair of sizes, got {(lo, hi)}")
        lo, hi = self.scale_x_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_x_range must be an ordered pair above 0, got {(lo, hi)}")
        for name in ("font_redraw_prob", "text_redraw_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in (
            "max_rotation",
            "max_offset",
            "max_shear",
            "size_step",
            "stroke_step",
            "rotation_step",
            "offset_step",
            "shear_step",
            "scale_x_step",
        ):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def _glyph_mask(face: ImageFont.FreeTypeFont, stroke: int, text: str) -> NDArray[np.uint8]:
    """``text``'s coverage bitmap from FreeType, cropped to its ink, with a ``_PAD`` border.

    The same bitmap ``ImageDraw.text(..., fill=255, stroke_width=stroke, stroke_fill=255)``
    draws, without its canvas: with equal fill and stroke inks PIL renders the stroked,
    filled glyph in one ``getmask2`` call at an integer origin (``start`` 0) and blends it at
    ink 255 over black, which returns the coverage unchanged. ``glyph_mask_reference`` is that
    route, kept beside this one and compared with it in the tests.
    """
    bitmap, _ = face.getmask2(
        text, "L", stroke_width=stroke, anchor="la", ink=255, start=(0, 0), stroke_filled=True
    )
    ink = bitmap.getbbox()
    if not ink:
        return np.zeros((1 + 2 * _PAD, 1 + 2 * _PAD), np.uint8)
    left, top, right, bottom = ink
    mask = np.zeros((bottom - top + 2 * _PAD, right - left + 2 * _PAD), np.uint8)
    # getmask2 returns a PIL core image; Image._new wraps it in an Image, which numpy reads.
    mask[_PAD:-_PAD, _PAD:-_PAD] = Image.Image()._new(bitmap.crop(ink))
    return mask


class GlyphRenderer:
    """Renders parameter columns to images with a per-glyph mask cache.

    The cache grows on first use of each (font, size, stroke, text) and is not shared between
    threads safely; give each worker its own renderer.

    Args:
        fonts: the font pool; ``font`` parameters index into it.
        image_size: canvas height and width in px.
    """

    def __init__(self, fonts: Sequence[FontInfo], image_size: int) -> None:
        self.fonts = tuple(fonts)
        self.image_size = image_size
        self._index: dict[tuple[int, int, int, str], int] = {}
        # Masks live back to back in one flat buffer; glyph g occupies
        # _buffer[_offset[g] : _offset[g] + _height[g] * _width[g]] in row-major order. uint8:
        # all digit glyphs of an 88-font pool (88 fonts x 20 sizes x 3 strokes x 10 digits)
        # take 18 MB (73 MB as float32, which gathered no faster once the buffer outgrew the
        # caches); a 2,000-sample run with lookahead 8 meets about half of them.
        self._buffer = np.zeros(1 << 16, dtype=np.uint8)
        self._used = 0
        self._offset: list[int] = []
        self._height: list[int] = []
        self._width: list[int] = []

    @property
    def num_glyphs(self) -> int:
        """How many (font, size, stroke, text) masks are cached."""
        return len(self._offset)

    def _face(self, font: int, size: int) -> ImageFont.FreeTypeFont:
        if not 0 <= font < len(self.fonts):
            raise PrivevoError(
                f"font index {font} is outside this pool of {len(self.fonts)} fonts; samples "
                "must come from a DrawText API with the same font pool"
            )
        return ImageFont.truetype(self.fonts[font].path, size)

    def glyph_mask(self, font: int, size: int, stroke: int, text: str) -> NDArray[np.uint8]:
        """The anti-aliased (h, w) mask of ``text``, cropped to its ink plus a zero border.

        The ink centre is the centre of the returned array. Text with no ink gives a blank
        mask.
        """
        return _glyph_mask(self._face(font, size), stroke, text)

    def glyph_mask_reference(
        self, font: int, size: int, stroke: int, text: str
    ) -> NDArray[np.uint8]:
        """Slow reference for :meth:`glyph_mask`: ``ImageDraw.text`` on a canvas sized by the
        text's bounding box, then cropped to the ink. Equal to it bit for bit (tested)."""
        face = self._face(font, size)
        left, top, right, bottom = (int(v) for v in face.getbbox(text, stroke_width=stroke))
        margin = stroke + 2
        canvas = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), 0)
        ImageDraw.Draw(canvas).text(
            (margin - left, margin - top),
            text,
            fill=255,
            font=face,
            stroke_width=stroke,
            stroke_fill=255,
        )
        ink = canvas.getbbox()
        mask = np.asarray(canvas.crop(ink), dtype=np.uint8) if ink else np.zeros((1, 1), np.uint8)
        return np.pad(mask, _PAD)

    def _glyph_ids(self, params: Mapping[str, NDArray]) -> NDArray[np.int64]:
        keys = list(
            zip(
                params["font"].tolist(),
                params["font_size"].tolist(),
                params["stroke_width"].tolist(),
                params["text"].tolist(),
                strict=True,
            )
        )
        index = self._index
        missing = {key for key in keys if key not in index}
        if missing:
            self._add_missing(missing)
        return np.fromiter((index[key] for key in keys), dtype=np.int64, count=len(keys))

    def _add_missing(self, keys: set[tuple[int, int, int, str]]) -> None:
        """Rasterises and caches the masks of ``keys``, none of them cached yet.

        One FreeType face per (font, size) among the keys, dropped once its glyphs are done:
        every open face maps its font file, ~125 KB resident per face, so keeping them would
        hold ~240 MB for the 88 fonts x 20 sizes a run meets here. Opening one costs about as
        much as rasterising a glyph (20-60 us), and lookahead's variations come in one batch
        (:meth:`DrawText.variations`), which opens each (font, size) once per iteration. Masks
        are appended in sorted key order, so the cache's layout depends only on which keys
        were missing.
        """
        masks: list[NDArray[np.uint8]] = []
        ordered = sorted(keys)
        face, face_key = None, None
        for font, size, stroke, text in ordered:
            if face_key != (font, size):
                face, face_key = self._face(font, size), (font, size)
            assert face is not None
            masks.append(_glyph_mask(face, stroke, text))
        need = self._used + sum(mask.size for mask in masks)
        if need > len(self._buffer):
            # Grown once per call, geometrically: the copies add up to less than the buffer.
            grown = np.zeros(max(2 * len(self._buffer), need), np.uint8)
            grown[: self._used] = self._buffer[: self._used]
            self._buffer = grown
        for key, mask in zip(ordered, masks, strict=True):
            self._buffer[self._used : self._used + mask.size] = mask.ravel()
            self._index[key] = len(self._offset)
            self._offset.append(self._used)
            self._height.append(mask.shape[0])
            self._width.append(mask.shape[1])
            self._used += mask.size

    def _inverse_affine(
        self, glyph: NDArray[np.int64], params: Mapping[str, NDArray]
    ) -> tuple[NDArray[np.float64], ...]:
        """Coefficients (a, b, c, d, e, f) mapping canvas to mask coordinates per image.

        Both use continuous coordinates in which pixel (i, j) has its centre at (j + 0.5,
        i + 0.5) (PIL's convention). The mask is widened by ``scale_x``, slanted by ``shear``
        and rotated counter-clockwise about its ink centre, which lands at the canvas centre
        plus offset: output point q maps to the mask point
        ``S^-1 H^-1 R(-rotation) (q - centre - offset) + (w / 2, h / 2)`` with
        ``S = diag(scale_x, 1)`` and ``H = [[1, -shear], [0, 1]]``.
        """
        theta = np.deg2rad(np.asarray(params["rotation"], dtype=np.float64))
        cos, sin = np.cos(theta), np.sin(theta)
        shear = np.asarray(params["shear"], dtype=np.float64)
        width = np.asarray(params["scale_x"], dtype=np.float64)
        px = self.image_size / 2 + np.asarray(params["offset_x"], dtype=np.float64)
        py = self.image_size / 2 + np.asarray(params["offset_y"], dtype=np.float64)
        half_w = np.asarray(self._width, dtype=np.float64)[glyph] / 2
        half_h = np.asarray(self._height, dtype=np.float64)[glyph] / 2
        # First row: (R(-rotation) row 1 + shear * R(-rotation) row 2) / scale_x.
        a = (cos + shear * sin) / width
        b = (shear * cos - sin) / width
        return (a, b, half_w - a * px - b * py, sin, cos, half_h - sin * px - cos * py)

    def render(self, params: Mapping[str, NDArray]) -> NDArray[np.uint8]:
        """Renders (n, H, W, 1) uint8 white-on-black images; image i depends only on row i."""
        n, size = len(params["font"]), self.image_size
        glyph = self._glyph_ids(params)
        coeffs = [c.astype(np.float32) for c in self._inverse_affine(glyph, params)]
        offset = np.asarray(self._offset, dtype=np.int32)[glyph]
        width = np.asarray(self._width, dtype=np.int32)[glyph]
        # Clamping a coordinate just inside the zero border reads zeros for every point that
        # falls outside the mask, so no per-tap bounds checks are needed.
        x_max = (width - 1).astype(np.float32) - np.float32(1e-3)
        y_max = (np.asarray(self._height, dtype=np.float32)[glyph] - 1) - np.float32(1e-3)
        buffer = self._buffer[: self._used]
        grid = np.arange(size, dtype=np.float32) + np.float32(0.5)
        gx, gy = grid[None, None, :], grid[None, :, None]
        out = np.empty((n, size, size, 1), dtype=np.uint8)
        for start in range(0, n, _CHUNK):
            s = slice(start, min(start + _CHUNK, n))
            a, b, c, d, e, f = (v[s, None, None] for v in coeffs)
            # Mask coordinates in pixel-index units (pixel centres sit at +0.5).
            x = a * gx + (b * gy + (c - np.float32(0.5)))
            y = d * gx + (e * gy + (f - np.float32(0.5)))
            np.clip(x, 0, x_max[s, None, None], out=x)
            np.clip(y, 0, y_max[s, None, None], out=y)
            xi, yi = x.astype(np.int32), y.astype(np.int32)
            x -= xi
            y -= yi
            w = width[s, None, None]
            idx = yi * w
            idx += xi
            idx += offset[s, None, None]
            # Gathered as uint8, widened to float32 (exactly) for the blend.
            top_left = buffer.take(idx).astype(np.float32)
            top_right = buffer.take(idx + 1).astype(np.float32)
            idx += w
            bottom_left = buffer.take(idx).astype(np.float32)
            bottom_right = buffer.take(idx + 1).astype(np.float32)
            # In-place bilinear blend: top row, bottom row, then between them.
            top_right -= top_left
            top_right *= x
            top_right += top_left
            bottom_right -= bottom_left
            bottom_right *= x
            bottom_right += bottom_left
            bottom_right -= top_right
            bottom_right *= y
            bottom_right += top_right
            out[s, :, :, 0] = np.rint(bottom_right)
        return out

    def render_reference(self, params: Mapping[str, NDArray]) -> NDArray[np.uint8]:
        """Slow reference for :meth:`render`: one PIL affine transform per image.

        Same masks and coordinates, but PIL's own bilinear filter (8-bit fixed point), so pixel
        values may differ by a few levels.
        """
        glyph = self._glyph_ids(params)
        coeffs = self._inverse_affine(glyph, params)
        size = self.image_size
        out = np.empty((len(glyph), size, size, 1), dtype=np.uint8)
        for i, g in enumerate(glyph.tolist()):
            start, h, w = self._offset[g], self._height[g], self._width[g]
            pixels = self._buffer[start : start + h * w].reshape(h, w)
            mask = Image.fromarray(pixels)
            data = tuple(float(v[i]) for v in coeffs)
            warped = mask.transform(
                (size, size), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR
            )
            out[i, :, :, 0] = np.asarray(warped)
        return out


class DrawText:
    """Sim-PE's text-rendering simulator API (registered as ``"drawtext"``).

    Args:
        label_names: the public label set.
        texts_per_label: strings to draw per label name; a label not listed draws its own name
            (so digit labels "0".."9" draw the digits).
        font_paths: explicit .ttf files for the pool; default: every .ttf in Debian's DejaVu
            folder and in matplotlib's ``mpl-data/fonts/ttf``, keeping those that can draw all
            the texts (see :func:`pe_core.apis.fonts.discover_fonts`).
        image_size: canvas height and width in px.
        font_size_range: inclusive font sizes in px; default 10-29 scaled to the canvas.
        stroke_width_range: inclusive stroke widths in px.
        max_rotation: rotations lie in [-max_rotation, max_rotation] degrees.
        max_offset: ink-centre offsets lie in [-max_offset, max_offset] px; default 2 px scaled.
        max_shear: slants lie in [-max_shear, max_shear] (x moves by -shear * y): handwriting
            leans, fonts mostly do not. Slant and width raised held-out MNIST accuracy from
            0.732 to 0.772 at eps 10 and from 0.725 to 0.750 at eps 1 (3 seeds each,
            ``benchmarks/results/quality-mnist-2026-12-07.md``).
        scale_x_range: inclusive range of the glyph's width factor.
        font_redraw_prob, text_redraw_prob, size_step, stroke_step, rotation_step, offset_step,
        shear_step, scale_x_step:
            the degree schedule at degree 1 (see :class:`DrawTextSettings`); ``size_step`` and
            ``offset_step`` default to 6 px and 2 px scaled to the canvas.

    Raises:
        PrivevoError: no font can draw the texts.
    """

    modality: ClassVar[Modality] = "image"
    uses_accelerator: ClassVar[bool] = False
    default_degree_end: ClassVar[float] = 0.2
    default_threshold_sigmas: ClassVar[float] = 2.0
    public_data: ClassVar[str] = "none: a simulator that renders local fonts"

    @classmethod
    def refusals(cls, config: dict[str, Any], data: DataShape) -> list[str]:
        """What drawtext cannot draw for ``data``: images of another size or with colour, and
        label names that are words (a label without ``texts_per_label`` draws its name)."""
        problems = square_grayscale_refusals(
            "drawtext",
            config,
            data,
            "use square grayscale images, or an API that makes these (diffusion with a model of "
            "that size)",
        )
        texts = config.get("texts_per_label") or {}
        words = [label for label in data.labels if label not in texts and len(label) > 2]
        if words:
            problems.append(
                f"api: drawtext draws each label's name unless api_config.texts_per_label gives "
                f"its texts, and would draw {words} as words; give the characters to draw, "
                f"e.g. texts_per_label: {{{words[0]!r}: ['1']}}"
            )
        return problems

    def __init__(
        self,
        label_names: Sequence[str],
        *,
        texts_per_label: Mapping[str, Sequence[str]] | None = None,
        font_paths: Sequence[str | Path] | None = None,
        image_size: int = 28,
        font_size_range: tuple[int, int] | None = None,
        stroke_width_range: tuple[int, int] = (0, 2),
        max_rotation: float = 30.0,
        max_offset: float | None = None,
        max_shear: float = 0.4,
        scale_x_range: tuple[float, float] = (0.7, 1.3),
        font_redraw_prob: float = 0.5,
        text_redraw_prob: float = 0.5,
        size_step: float | None = None,
        stroke_step: float = 2.0,
        rotation_step: float = 20.0,
        offset_step: float | None = None,
        shear_step: float = 0.3,
        scale_x_step: float = 0.2,
    ) -> None:
        self.label_names = tuple(label_names)
        if not self.label_names:
            raise ValueError("label_names must not be empty")
        texts_per_label = dict(texts_per_label or {})
        unknown = sorted(set(texts_per_label) - set(self.label_names))
        if unknown:
            raise ValueError(f"texts_per_label names unknown labels {unknown}")
        self.texts: tuple[tuple[str, ...], ...] = tuple(
            tuple(texts_per_label.get(name, (name,))) for name in self.label_names
        )
        for name, texts in zip(self.label_names, self.texts, strict=True):
            if not texts:
                raise ValueError(f"label {name!r} has no texts to draw")
        scale = image_size / 28
        self.settings = DrawTextSettings(
            image_size=image_size,
            font_size_range=font_size_range or (round(10 * scale), round(29 * scale)),
            stroke_width_range=stroke_width_range,
            max_rotation=max_rotation,
            max_offset=2.0 * scale if max_offset is None else max_offset,
            max_shear=max_shear,
            scale_x_range=(float(scale_x_range[0]), float(scale_x_range[1])),
            font_redraw_prob=font_redraw_prob,
            text_redraw_prob=text_redraw_prob,
            size_step=6.0 * scale if size_step is None else size_step,
            stroke_step=stroke_step,
            rotation_step=rotation_step,
            offset_step=2.0 * scale if offset_step is None else offset_step,
            shear_step=shear_step,
            scale_x_step=scale_x_step,
        )
        self.font_pool = discover_fonts([t for texts in self.texts for t in texts], font_paths)
        self.renderer = GlyphRenderer(self.font_pool, image_size)

    @property
    def fonts(self) -> tuple[str, ...]:
        """Paths of the font pool, in index order (record them with a run's metadata)."""
        return tuple(font.path for font in self.font_pool)

    def _draw_texts(self, labels: NDArray[np.int64], rng: np.random.Generator) -> NDArray[np.str_]:
        """One text per label, uniform among that label's texts."""
        u = rng.random(len(labels))
        counts = np.array([len(t) for t in self.texts], dtype=np.int64)[labels]
        picks = np.minimum((u * counts).astype(np.int64), counts - 1)
        return np.array(
            [self.texts[lab][k] for lab, k in zip(labels.tolist(), picks.tolist(), strict=True)],
            dtype=np.str_,
        ).reshape(len(labels))

    def _samples(
        self, labels: NDArray[np.int64], params: dict[str, NDArray], ids: NDArray
    ) -> Samples:
        return Samples(
            ids=ids,
            labels=labels,
            label_names=self.label_names,
            images=self.renderer.render(params),
            params=params,
        )

    def random(self, label: int, n: int, rng: np.random.Generator) -> Samples:
        """Draws n images of ``label`` with parameters uniform over their ranges."""
        if not 0 <= label < len(self.label_names):
            raise ValueError(f"label must lie in [0, {len(self.label_names)}), got {label}")
        s = self.settings
        labels = np.full(n, label, dtype=np.int64)
        params: dict[str, NDArray] = {
            "font": rng.integers(0, len(self.font_pool), size=n, dtype=np.int64),
            "font_size": rng.integers(
                s.font_size_range[0], s.font_size_range[1] + 1, size=n, dtype=np.int64
            ),
            "stroke_width": rng.integers(
                s.stroke_width_range[0], s.stroke_width_range[1] + 1, size=n, dtype=np.int64
            ),
            "rotation": rng.uniform(-s.max_rotation, s.max_rotation, size=n),
            "text": self._draw_texts(labels, rng),
            "offset_x": rng.uniform(-s.max_offset, s.max_offset, size=n),
            "offset_y": rng.uniform(-s.max_offset, s.max_offset, size=n),
            "shear": rng.uniform(-s.max_shear, s.max_shear, size=n),
            "scale_x": rng.uniform(*s.scale_x_range, size=n),
        }
        return self._samples(labels, params, new_ids(rng, n))

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        """Perturbs each sample's parameters by the degree schedule and re-renders.

        Args:
            samples: images made by this API (their ``params`` hold the columns above).
            degree: strength in [0, 1]; 0 keeps the images, 1 is the strongest variation.
            rng: source of all randomness.

        Returns:
            One variation per sample, same order and labels, new ids.
        """
        check_variation_input("drawtext", samples, degree, self.label_names, PARAM_COLUMNS)
        params, ids = self._varied_params(samples, degree, rng)
        return self._samples(samples.labels, params, ids)

    def variations(
        self, samples: Samples, degree: float, rng: np.random.Generator, count: int
    ) -> list[Samples]:
        """``count`` variations of ``samples``, rendered together.

        Bit for bit what ``count`` calls of :meth:`variation` with ``rng`` return (the same
        draws in the same order; rendering draws nothing and each image depends only on its own
        row), but the glyphs they need are rasterised in one pass, opening each font face once
        instead of once per call: lookahead asks for 8 variations of one population.
        """
        check_variation_input("drawtext", samples, degree, self.label_names, PARAM_COLUMNS)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        drawn = [self._varied_params(samples, degree, rng) for _ in range(count)]
        if not drawn:
            return []
        n = len(samples)
        images = self.renderer.render(
            {key: np.concatenate([params[key] for params, _ in drawn]) for key in PARAM_COLUMNS}
        )
        return [
            Samples(
                ids=ids,
                labels=samples.labels,
                label_names=self.label_names,
                images=images[i * n : (i + 1) * n],
                params=params,
            )
            for i, (params, ids) in enumerate(drawn)
        ]

    def _varied_params(
        self, samples: Samples, degree: float, rng: np.random.Generator
    ) -> tuple[dict[str, NDArray], NDArray[np.str_]]:
        """The parameters and ids of one variation of ``samples`` (all of its draws)."""
        s, n, old = self.settings, len(samples), samples.params
        # Every draw happens whatever the degree, so one seed couples all degrees.
        redraw_font = rng.random(n) < degree * s.font_redraw_prob
        fresh_font = rng.integers(0, len(self.font_pool), size=n, dtype=np.int64)
        redraw_text = rng.random(n) < degree * s.text_redraw_prob
        fresh_text = self._draw_texts(samples.labels, rng)
        u = rng.uniform(-1.0, 1.0, size=(7, n))

        def step(column: str, scale: float, lo: float, hi: float, row: int) -> NDArray:
            moved = np.asarray(old[column]) + u[row] * (degree * scale)
            return np.clip(moved, lo, hi)

        params: dict[str, NDArray] = {
            "font": np.where(redraw_font, fresh_font, np.asarray(old["font"], dtype=np.int64)),
            "font_size": np.rint(step("font_size", s.size_step, *s.font_size_range, 0)).astype(
                np.int64
            ),
            "stroke_width": np.rint(
                step("stroke_width", s.stroke_step, *s.stroke_width_range, 1)
            ).astype(np.int64),
            "rotation": step("rotation", s.rotation_step, -s.max_rotation, s.max_rotation, 2),
            "text": np.where(redraw_text, fresh_text, np.asarray(old["text"], dtype=np.str_)),
            "offset_x": step("offset_x", s.offset_step, -s.max_offset, s.max_offset, 3),
            "offset_y": step("offset_y", s.offset_step, -s.max_offset, s.max_offset, 4),
            "shear": step("shear", s.shear_step, -s.max_shear, s.max_shear, 5),
            "scale_x": step("scale_x", s.scale_x_step, *s.scale_x_range, 6),
        }
        return params, new_ids(rng, n)
