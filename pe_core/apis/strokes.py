"""A pen-stroke simulator of handwritten digits, normalised the way MNIST's digits were.

Fonts draw digits as type: serifs, thick and thin strokes, closed 4s, barred 1s. People draw
them as a few strokes of a round pen. This simulator keeps, for each digit, a few common ways
of writing it (:data:`DIGIT_STYLES`: an open or a closed 4, a 7 with or without its bar, a 1
with or without its flag and base, ...), each as strokes through spline knots in a unit box.
A sample moves every knot a little, slants, widens and turns the whole, and draws the strokes
(Catmull-Rom splines through the knots) with a round pen. Like MNIST (LeCun et al., 1998), the
digit is then scaled so that the longer side of its ink box is ``box`` px (20 of 28) and placed
with its centre of mass on the centre pixel (14, 14 of 28), plus an offset of at most half a
pixel by default.

Every sample carries its parameters in ``Samples.params``; variation perturbs them, not the
pixels (as Sim-PE's simulators do, arXiv:2502.05505):

==========  ==============  ==============================================================
column      dtype, shape    meaning
==========  ==============  ==============================================================
style       int64           index into the label's entry of :data:`DIGIT_STYLES`
jitter      float64 (2K,)   (dx, dy) per knot, in units of the unit box (K: most knots of
                            any style of the API's labels; a style uses its first ones)
pen         float64         pen width in px
slant       float64         x moves by -slant * y (y downwards), so > 0 leans right
rotation    float64         counter-clockwise rotation in degrees
aspect      float64         width factor applied before the slant
offset_x    float64         centre of mass right of the centre pixel's centre, px
offset_y    float64         centre of mass below the centre pixel's centre, px
==========  ==============  ==============================================================

Rendering is a pure function of a row: the strokes are drawn with PIL at ``_SUPER`` times the
resolution and averaged down, which anti-aliases the edges.

**Its variations stay strong to the last iteration** (``default_degree_end`` 1.0, where other
APIs fall to 0.2). Random stroke digits already look like handwriting, so PE's job here is to
move the population's mix of shapes towards the private one; fine late steps instead made
near-copies of the few best-voted parents. On held-out MNIST at eps 1 (T 4, 3 seeds), the
schedule falling to 0.2 lost recall from 0.55 at iteration 1 to 0.12 and accuracy from 0.832
(iteration 2) to 0.805; at degree 1 throughout, recall stayed at 0.49 and accuracy rose at every
iteration, to 0.850 (both at threshold 2 sigma;
``benchmarks/results/quality-mnist-strokes-2026-12-07.md``). drawtext's
fonts are far from handwriting and need the fine steps: at degree 1 throughout it fell from
0.725 to 0.604.

**Its votes are thresholded at one noise standard deviation** (``default_threshold_sigmas``
1.0, where other APIs use 2). On all 10,000 records 1 and 2 sigma scored alike (0.853 and
0.850 at eps 1); on 1,497 records (about 150 a label, spread over 200 candidates) 2 sigma
dropped nearly every vote and PE ended below its random digits (0.708 against 0.735), 1 sigma
gained (0.773).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from pe_core.apis.base import check_variation_input, square_grayscale_refusals
from pe_core.samples import DataShape, Modality, Samples, new_ids

Point = tuple[float, float]
Stroke = tuple[Point, ...]
Style = tuple[Stroke, ...]

# How each digit is commonly written: strokes of spline knots in a unit box, x to the right and
# y downwards. A stroke whose last knot repeats its first is a closed loop. Knots with the same
# coordinates within a style are one knot, so strokes that meet stay joined when knots move.
DIGIT_STYLES: dict[str, tuple[Style, ...]] = {
    "0": (
        (
            (
                (0.5, 0.0), (0.85, 0.2), (0.9, 0.55), (0.7, 0.95), (0.35, 1.0), (0.1, 0.7),
                (0.12, 0.3), (0.5, 0.0),
            ),
        ),  # a closed oval
        (
            (
                (0.6, 0.05), (0.3, 0.05), (0.1, 0.45), (0.3, 0.95), (0.7, 0.95), (0.9, 0.5),
                (0.7, 0.05), (0.45, 0.1),
            ),
        ),  # an oval whose end overshoots its start
    ),
    "1": (
        (((0.5, 0.0), (0.5, 1.0)),),  # a bar
        (((0.3, 0.2), (0.55, 0.0), (0.55, 1.0)),),  # with a flag
        (((0.3, 0.2), (0.55, 0.0), (0.55, 1.0)), ((0.3, 1.0), (0.8, 1.0))),  # flag and base
    ),
    "2": (
        (
            ((0.15, 0.25), (0.45, 0.0), (0.8, 0.15), (0.75, 0.45), (0.4, 0.75), (0.1, 1.0)),
            ((0.1, 1.0), (0.9, 1.0)),
        ),  # a corner at the foot
        (
            (
                (0.15, 0.25), (0.45, 0.0), (0.8, 0.15), (0.75, 0.45), (0.3, 0.85),
                (0.15, 0.95), (0.35, 0.85), (0.9, 0.98),
            ),
        ),  # a loop at the foot
    ),
    "3": (
        (
            ((0.15, 0.12), (0.5, 0.0), (0.8, 0.18), (0.7, 0.42), (0.4, 0.5)),
            ((0.4, 0.5), (0.8, 0.62), (0.85, 0.85), (0.5, 1.0), (0.12, 0.88)),
        ),  # two bowls
        (
            ((0.15, 0.0), (0.85, 0.0), (0.45, 0.42)),
            ((0.45, 0.42), (0.85, 0.62), (0.8, 0.9), (0.45, 1.0), (0.12, 0.88)),
        ),  # a flat top
    ),
    "4": (
        (((0.7, 0.0), (0.1, 0.68), (0.95, 0.68)), ((0.7, 0.0), (0.7, 1.0))),  # closed
        (((0.2, 0.0), (0.12, 0.6), (0.9, 0.6)), ((0.75, 0.05), (0.72, 1.0))),  # open
    ),
    "5": (
        (
            ((0.85, 0.0), (0.25, 0.0)),
            ((0.25, 0.0), (0.2, 0.45)),
            ((0.2, 0.45), (0.6, 0.38), (0.85, 0.62), (0.7, 0.92), (0.4, 1.0), (0.12, 0.9)),
        ),  # flag first
        (
            ((0.25, 0.0), (0.2, 0.45), (0.6, 0.38), (0.85, 0.65), (0.6, 0.97), (0.15, 0.9)),
            ((0.25, 0.0), (0.85, 0.02)),
        ),  # flag last
    ),
    "6": (
        (
            (
                (0.75, 0.0), (0.4, 0.25), (0.15, 0.65), (0.3, 0.98), (0.7, 0.95), (0.82, 0.7),
                (0.55, 0.5), (0.2, 0.65),
            ),
        ),  # a curved stem
        (
            (
                (0.6, 0.0), (0.25, 0.5), (0.25, 0.9), (0.55, 1.0), (0.8, 0.8), (0.6, 0.55),
                (0.25, 0.7),
            ),
        ),  # a straighter stem
    ),
    "7": (
        (((0.1, 0.02), (0.9, 0.0)), ((0.9, 0.0), (0.35, 1.0))),  # plain
        (
            ((0.1, 0.02), (0.9, 0.0)),
            ((0.9, 0.0), (0.35, 1.0)),
            ((0.35, 0.5), (0.8, 0.5)),
        ),  # with a bar
        (((0.1, 0.02), (0.9, 0.0)), ((0.9, 0.0), (0.6, 0.4), (0.45, 1.0))),  # a curved stem
    ),
    "8": (
        (
            (
                (0.5, 0.48), (0.2, 0.25), (0.5, 0.0), (0.8, 0.22), (0.5, 0.48), (0.15, 0.75),
                (0.5, 1.0), (0.85, 0.75), (0.5, 0.48),
            ),
        ),  # one stroke crossing itself
        (
            ((0.5, 0.0), (0.8, 0.2), (0.5, 0.45), (0.2, 0.2), (0.5, 0.0)),
            ((0.5, 0.45), (0.88, 0.72), (0.5, 1.0), (0.12, 0.72), (0.5, 0.45)),
        ),  # two loops
    ),
    "9": (
        (
            (
                (0.82, 0.2), (0.5, 0.02), (0.18, 0.22), (0.35, 0.48), (0.7, 0.4), (0.82, 0.2),
                (0.78, 0.6), (0.72, 1.0),
            ),
        ),  # loop and stem in one stroke
        (
            ((0.8, 0.25), (0.5, 0.0), (0.2, 0.25), (0.5, 0.5), (0.8, 0.25)),
            ((0.8, 0.25), (0.75, 1.0)),
        ),  # a closed loop and a straight stem
    ),
}  # fmt: skip

PARAM_COLUMNS = ("style", "jitter", "pen", "slant", "rotation", "aspect", "offset_x", "offset_y")
_SPAN_POINTS = 6  # polyline points per spline span
_SUPER = 4  # strokes are drawn at this many times the resolution, then averaged down


@dataclass(frozen=True)
class _Style:
    """One style's distinct knots, and per stroke the indices of its knots and whether it is
    a closed loop."""

    knots: NDArray[np.float64]
    strokes: tuple[NDArray[np.int64], ...]
    closed: tuple[bool, ...]

    @classmethod
    def of(cls, style: Style) -> _Style:
        index: dict[Point, int] = {}
        strokes, closed = [], []
        for stroke in style:
            loop = len(stroke) > 2 and stroke[0] == stroke[-1]
            points = stroke[:-1] if loop else stroke
            strokes.append(np.array([index.setdefault(p, len(index)) for p in points]))
            closed.append(loop)
        return cls(np.array(list(index), dtype=np.float64), tuple(strokes), tuple(closed))


def catmull_rom(knots: NDArray[np.float64], closed: bool) -> NDArray[np.float64]:
    """The uniform Catmull-Rom spline through ``knots`` (k, 2) as a polyline that passes
    through every knot, ``_SPAN_POINTS`` points per span; a closed one ends at its start. An
    open curve's end tangents come from knots mirrored beyond its ends; two knots give their
    straight segment."""
    if len(knots) == 2 and not closed:
        return knots.copy()
    if closed:
        padded = np.concatenate([knots[-1:], knots, knots[:2]])
        spans = len(knots)
    else:
        ahead, behind = 2 * knots[:1] - knots[1:2], 2 * knots[-1:] - knots[-2:-1]
        padded = np.concatenate([ahead, knots, behind])
        spans = len(knots) - 1
    t = np.linspace(0.0, 1.0, _SPAN_POINTS, endpoint=False)[None, :, None]
    p0, p1, p2, p3 = (padded[i : i + spans, None, :] for i in range(4))
    curve = 0.5 * (
        2 * p1
        + (p2 - p0) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )
    return np.concatenate([curve.reshape(-1, 2), knots[:1] if closed else knots[-1:]])


@dataclass(frozen=True)
class StrokesSettings:
    """Parameter ranges and the degree schedule of :class:`Strokes` (px, degrees, unit-box
    units for the jitter).

    ``random`` draws each parameter uniformly from its range. ``variation`` at degree ``d``
    redraws the style with probability ``d * style_redraw_prob``, adds ``u * d * step`` to
    every other parameter (to each knot's x and y for the jitter) with an independent
    ``u ~ U(-1, 1)`` each, and clips back into the range. ``d = 0`` keeps every parameter.
    """

    image_size: int
    box: float
    pen_range: tuple[float, float]
    max_jitter: float
    max_slant: float
    max_rotation: float
    aspect_range: tuple[float, float]
    max_offset: float
    style_redraw_prob: float
    jitter_step: float
    pen_step: float
    slant_step: float
    rotation_step: float
    aspect_step: float
    offset_step: float

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 px, got {self.image_size}")
        if not 0 < self.box <= self.image_size:
            raise ValueError(f"box must lie in (0, image_size], got {self.box}")
        for name in ("pen_range", "aspect_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be an ordered pair above 0, got {(lo, hi)}")
        if self.pen_range[1] >= self.box:
            raise ValueError(f"pen widths must stay below box, got {self.pen_range}")
        if not 0.0 <= self.style_redraw_prob <= 1.0:
            raise ValueError(f"style_redraw_prob must lie in [0, 1], got {self.style_redraw_prob}")
        for name in (
            "max_jitter",
            "max_slant",
            "max_rotation",
            "max_offset",
            "jitter_step",
            "pen_step",
            "slant_step",
            "rotation_step",
            "aspect_step",
            "offset_step",
        ):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class Strokes:
    """Handwritten digits from pen strokes (registered as ``"strokes"``).

    Args:
        label_names: the public label set: digits "0" to "9" (any subset, any order).
        image_size: canvas height and width in px.
        box: the longer side of each digit's ink box in px (MNIST: 20 of 28); default scaled
            to the canvas.
        pen_range: pen widths in px; default 1.5-4 scaled to the canvas.
        max_jitter: each knot moves by up to this much in x and in y (the unit box is 1).
        max_slant, max_rotation, aspect_range, max_offset: ranges of the slant, the rotation
            (degrees), the width factor and the centre-of-mass offset (px; default 0.5
            scaled, as MNIST's whole-pixel translation left it).
        style_redraw_prob, jitter_step, pen_step, slant_step, rotation_step, aspect_step,
        offset_step: the degree schedule at degree 1 (see :class:`StrokesSettings`).

    Raises:
        ValueError: a label that is not a digit, or a setting out of range.
    """

    modality: ClassVar[Modality] = "image"
    uses_accelerator: ClassVar[bool] = False
    # Variations as strong at the end as at the start: see the module docstring.
    default_degree_end: ClassVar[float] = 1.0
    # A threshold of one noise standard deviation: see the module docstring.
    default_threshold_sigmas: ClassVar[float] = 1.0
    public_data: ClassVar[str] = (
        "none: a simulator of pen strokes, with hand-made shapes of the digits 0-9"
    )

    @classmethod
    def refusals(cls, config: dict[str, Any], data: DataShape) -> list[str]:
        """What strokes cannot draw for ``data``: images of another size or with colour, and
        labels that are not the digits 0-9."""
        problems = square_grayscale_refusals("strokes", config, data, "use square grayscale images")
        others = [label for label in data.labels if label not in DIGIT_STYLES]
        if others:
            problems.append(
                f"api: strokes draws the digits 0-9 only, and the labels {others} are not "
                "digits; use drawtext (fonts, any character) or name the labels 0-9"
            )
        return problems

    def __init__(
        self,
        label_names: Sequence[str],
        *,
        image_size: int = 28,
        box: float | None = None,
        pen_range: tuple[float, float] | None = None,
        max_jitter: float = 0.12,
        max_slant: float = 0.4,
        max_rotation: float = 15.0,
        aspect_range: tuple[float, float] = (0.6, 1.3),
        max_offset: float | None = None,
        style_redraw_prob: float = 0.3,
        jitter_step: float = 0.06,
        pen_step: float | None = None,
        slant_step: float = 0.2,
        rotation_step: float = 10.0,
        aspect_step: float = 0.2,
        offset_step: float | None = None,
    ) -> None:
        self.label_names = tuple(label_names)
        if not self.label_names:
            raise ValueError("label_names must not be empty")
        others = [name for name in self.label_names if name not in DIGIT_STYLES]
        if others:
            raise ValueError(f"strokes draws the digits 0-9; {others} are not digits")
        scale = image_size / 28
        self.settings = StrokesSettings(
            image_size=image_size,
            box=20.0 * scale if box is None else box,
            pen_range=(
                (1.5 * scale, 4.0 * scale)
                if pen_range is None
                else (float(pen_range[0]), float(pen_range[1]))
            ),
            max_jitter=max_jitter,
            max_slant=max_slant,
            max_rotation=max_rotation,
            aspect_range=(float(aspect_range[0]), float(aspect_range[1])),
            max_offset=0.5 * scale if max_offset is None else max_offset,
            style_redraw_prob=style_redraw_prob,
            jitter_step=jitter_step,
            pen_step=1.0 * scale if pen_step is None else pen_step,
            slant_step=slant_step,
            rotation_step=rotation_step,
            aspect_step=aspect_step,
            offset_step=0.5 * scale if offset_step is None else offset_step,
        )
        self.styles = tuple(
            tuple(_Style.of(style) for style in DIGIT_STYLES[name]) for name in self.label_names
        )
        self.max_knots = max(len(style.knots) for styles in self.styles for style in styles)

    def _polylines(self, label: int, row: dict[str, Any]) -> list[NDArray[np.float64]]:
        """The strokes of one sample as polylines, centred on the unit box's centre, before
        scaling to the canvas."""
        style = self.styles[label][int(row["style"])]
        knots = style.knots + np.asarray(row["jitter"])[: style.knots.size].reshape(-1, 2) - 0.5
        knots[:, 0] *= row["aspect"]
        knots[:, 0] -= row["slant"] * knots[:, 1]
        theta = np.deg2rad(row["rotation"])
        # Counter-clockwise on screen, where y points down.
        turn = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
        knots = knots @ turn.T
        return [
            catmull_rom(knots[idx], loop)
            for idx, loop in zip(style.strokes, style.closed, strict=True)
        ]

    def _render_one(self, label: int, row: dict[str, Any]) -> NDArray[np.uint8]:
        s = self.settings
        lines = self._polylines(label, row)
        points = np.concatenate(lines)
        lo, hi = points.min(axis=0), points.max(axis=0)
        pen = float(row["pen"])
        # The pen adds half its width on every side: the ink box's longer side is then `box`,
        # which fits on a canvas of the image's size, centred.
        scale = (s.box - pen) * _SUPER / max(float((hi - lo).max()), 1e-6)
        size = s.image_size * _SUPER
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        width = max(1, round(pen * _SUPER))
        # PIL's ellipse spans its box's end pixels too: this box draws a disc `width` across.
        r = (width - 1) / 2
        for line in lines:
            xy = ((line - (lo + hi) / 2) * scale + size / 2).tolist()
            draw.line([tuple(p) for p in xy], fill=255, width=width)
            for x, y in xy:  # a round pen: round ends and joints
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        ink = np.asarray(canvas, dtype=np.float64)
        centres = np.arange(size) + 0.5  # pixel centres sit at +0.5
        total = ink.sum()
        cx = ink.sum(axis=0) @ centres / total
        cy = ink.sum(axis=1) @ centres / total
        # Cut the window that puts the centre of mass on the centre of pixel (n/2, n/2) plus
        # the offset, to a quarter pixel: MNIST translated each digit by whole pixels to put
        # its centre of mass on pixel (14, 14), so its digits' lie within half a pixel of it.
        x0 = round(cx - size / 2 - (0.5 + float(row["offset_x"])) * _SUPER)
        y0 = round(cy - size / 2 - (0.5 + float(row["offset_y"])) * _SUPER)
        window = np.zeros((size, size))
        ys, yd = slice(max(y0, 0), min(y0 + size, size)), slice(max(-y0, 0), min(size - y0, size))
        xs, xd = slice(max(x0, 0), min(x0 + size, size)), slice(max(-x0, 0), min(size - x0, size))
        window[yd, xd] = ink[ys, xs]
        small = window.reshape(s.image_size, _SUPER, s.image_size, _SUPER).mean(axis=(1, 3))
        return np.rint(small).astype(np.uint8)

    def render(self, labels: NDArray[np.int64], params: dict[str, NDArray]) -> NDArray[np.uint8]:
        """(n, H, W, 1) uint8 white-on-black images; image i depends only on row i."""
        size = self.settings.image_size
        out = np.empty((len(labels), size, size, 1), dtype=np.uint8)
        for i, label in enumerate(labels.tolist()):
            out[i, :, :, 0] = self._render_one(label, {k: params[k][i] for k in PARAM_COLUMNS})
        return out

    def _samples(
        self, labels: NDArray[np.int64], params: dict[str, NDArray], ids: NDArray[np.str_]
    ) -> Samples:
        return Samples(
            ids=ids,
            labels=labels,
            label_names=self.label_names,
            images=self.render(labels, params),
            params=params,
        )

    def random(self, label: int, n: int, rng: np.random.Generator) -> Samples:
        """Draws n images of ``label`` with parameters uniform over their ranges."""
        if not 0 <= label < len(self.label_names):
            raise ValueError(f"label must lie in [0, {len(self.label_names)}), got {label}")
        s = self.settings
        params: dict[str, NDArray] = {
            "style": rng.integers(0, len(self.styles[label]), size=n, dtype=np.int64),
            "jitter": rng.uniform(-s.max_jitter, s.max_jitter, size=(n, 2 * self.max_knots)),
            "pen": rng.uniform(*s.pen_range, size=n),
            "slant": rng.uniform(-s.max_slant, s.max_slant, size=n),
            "rotation": rng.uniform(-s.max_rotation, s.max_rotation, size=n),
            "aspect": rng.uniform(*s.aspect_range, size=n),
            "offset_x": rng.uniform(-s.max_offset, s.max_offset, size=n),
            "offset_y": rng.uniform(-s.max_offset, s.max_offset, size=n),
        }
        return self._samples(np.full(n, label, dtype=np.int64), params, new_ids(rng, n))

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        """Perturbs each sample's parameters by the degree schedule and draws it again.

        Args:
            samples: images made by this API (their ``params`` hold the columns above).
            degree: strength in [0, 1]; 0 keeps the images, 1 is the strongest variation.
            rng: source of all randomness.

        Returns:
            One variation per sample, same order and labels, new ids.
        """
        check_variation_input("strokes", samples, degree, self.label_names, PARAM_COLUMNS)
        s, n, old = self.settings, len(samples), samples.params
        counts = np.array([len(styles) for styles in self.styles], dtype=np.int64)[samples.labels]
        # Every draw happens whatever the degree, so one seed couples all degrees.
        redraw = rng.random(n) < degree * s.style_redraw_prob
        fresh = np.minimum((rng.random(n) * counts).astype(np.int64), counts - 1)
        u = rng.uniform(-1.0, 1.0, size=(6, n))
        knot_u = rng.uniform(-1.0, 1.0, size=(n, 2 * self.max_knots))

        def step(column: str, size: float, lo: float, hi: float, row: int) -> NDArray:
            return np.clip(np.asarray(old[column]) + u[row] * (degree * size), lo, hi)

        params: dict[str, NDArray] = {
            "style": np.where(redraw, fresh, np.asarray(old["style"], dtype=np.int64)),
            "jitter": np.clip(
                np.asarray(old["jitter"]) + knot_u * (degree * s.jitter_step),
                -s.max_jitter,
                s.max_jitter,
            ),
            "pen": step("pen", s.pen_step, *s.pen_range, 0),
            "slant": step("slant", s.slant_step, -s.max_slant, s.max_slant, 1),
            "rotation": step("rotation", s.rotation_step, -s.max_rotation, s.max_rotation, 2),
            "aspect": step("aspect", s.aspect_step, *s.aspect_range, 3),
            "offset_x": step("offset_x", s.offset_step, -s.max_offset, s.max_offset, 4),
            "offset_y": step("offset_y", s.offset_step, -s.max_offset, s.max_offset, 5),
        }
        return self._samples(samples.labels, params, new_ids(rng, n))
