"""Images per second of the drawtext simulator against a naive per-image PIL render.

The peer draws each image the way a straightforward simulator does (and roughly as the public
reference PE library does): a fresh canvas, ``ImageDraw.text`` at the centre, then
``Image.rotate`` with bilinear resampling. It is given a font-object cache so that it measures
rendering rather than font-file loading. Both run in this process on one core (numpy's
element-wise kernels used here are single-threaded).

Usage: .venv/bin/python benchmarks/drawtext_speed.py [--n 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from pe_core.apis.drawtext import PARAM_COLUMNS, DrawText
from pe_core.samples import Samples


def naive_render(api: DrawText, params: Mapping[str, NDArray]) -> NDArray[np.uint8]:
    """Per-image PIL render of the same parameters (the peer)."""
    size = api.settings.image_size
    faces: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}
    out = np.empty((len(params["font"]), size, size, 1), dtype=np.uint8)
    rows = zip(*(params[c].tolist() for c in PARAM_COLUMNS), strict=True)
    for i, (font, font_size, stroke, rotation, text, dx, dy) in enumerate(rows):
        face = faces.get((font, font_size))
        if face is None:
            face = faces[(font, font_size)] = ImageFont.truetype(api.fonts[font], font_size)
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).text(
            (size / 2 + dx, size / 2 + dy),
            text,
            fill=255,
            font=face,
            anchor="mm",
            stroke_width=stroke,
            stroke_fill=255,
        )
        out[i, :, :, 0] = np.asarray(canvas.rotate(rotation, Image.Resampling.BILINEAR))
    return out


def best_rate(n: int, repeats: int, work: Callable[[], object]) -> float:
    """Best images/s over ``repeats`` runs of ``work`` (which makes n images)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images per timed call")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    labels = [str(d) for d in range(10)]
    rng = np.random.default_rng(0)

    api = DrawText(labels)
    print(f"font pool: {len(api.fonts)} fonts; canvas {api.settings.image_size} px")
    per_label = args.n // len(labels)
    n = per_label * len(labels)

    # Cold: a fresh API whose glyph cache fills as it goes, as in a PE run's first iterations.
    start = time.perf_counter()
    population = Samples.concat([api.random(lab, per_label, rng) for lab in range(len(labels))])
    cold_random = n / (time.perf_counter() - start)
    start = time.perf_counter()
    api.variation(population, 0.5, rng)
    cold_variation = n / (time.perf_counter() - start)

    # Warm: every glyph these calls need is cached (the steady state of a long run).
    for _ in range(5):
        population = api.variation(population, 1.0, rng)
    warm_random = best_rate(
        n,
        args.repeats,
        lambda: [api.random(lab, per_label, rng) for lab in range(len(labels))],
    )
    warm_variation = best_rate(n, args.repeats, lambda: api.variation(population, 0.5, rng))
    render_only = best_rate(n, args.repeats, lambda: api.renderer.render(population.params))

    peer_n = min(n, 2_000)
    subset = {k: v[:peer_n] for k, v in population.params.items()}
    naive = best_rate(peer_n, args.repeats, lambda: naive_render(api, subset))
    pil_affine = best_rate(peer_n, args.repeats, lambda: api.renderer.render_reference(subset))

    print(f"{'path':<44}{'images/s':>12}{'x naive PIL':>14}")
    rows = [
        ("drawtext random (cold glyph cache)", cold_random),
        ("drawtext variation d=0.5 (cold glyph cache)", cold_variation),
        ("drawtext random (warm)", warm_random),
        ("drawtext variation d=0.5 (warm)", warm_variation),
        ("drawtext render only (warm)", render_only),
        ("PIL affine per image on cached glyphs", pil_affine),
        ("naive PIL ImageDraw.text + rotate (peer)", naive),
    ]
    for name, rate in rows:
        print(f"{name:<44}{rate:>12,.0f}{rate / naive:>14.1f}")
    print(f"glyphs cached: {api.renderer.num_glyphs}")


if __name__ == "__main__":
    main()
