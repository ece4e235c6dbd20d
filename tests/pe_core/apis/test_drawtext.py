from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFont

from pe_core.apis import DrawText, create_api
from pe_core.apis.base import VariationApi
from pe_core.apis.drawtext import PARAM_COLUMNS
from pe_core.apis.fonts import default_font_dirs, discover_fonts
from pe_core.errors import PrivevoError
from pe_core.samples import Samples
from tests.pe_core.contracts import VariationApiContract

DIGITS = [str(d) for d in range(10)]


def dejavu_sans() -> Path:
    for folder in default_font_dirs():
        if (folder / "DejaVuSans.ttf").is_file():
            return folder / "DejaVuSans.ttf"
    pytest.skip("DejaVuSans.ttf is not installed")


@pytest.fixture(scope="module")
def digits() -> DrawText:
    return DrawText(DIGITS)


@pytest.fixture(scope="module")
def one_font() -> DrawText:
    return DrawText(DIGITS, font_paths=[dejavu_sans()])


def upright(api: DrawText, texts: list[str], **overrides: object) -> dict[str, np.ndarray]:
    """Parameters for centred, unrotated texts in font 0 at size 20 without stroke."""
    n = len(texts)
    params: dict[str, np.ndarray] = {
        "font": np.zeros(n, dtype=np.int64),
        "font_size": np.full(n, 20, dtype=np.int64),
        "stroke_width": np.zeros(n, dtype=np.int64),
        "rotation": np.zeros(n),
        "text": np.array(texts, dtype=np.str_),
        "offset_x": np.zeros(n),
        "offset_y": np.zeros(n),
        "shear": np.zeros(n),
        "scale_x": np.ones(n),
    }
    for key, value in overrides.items():
        params[key] = np.broadcast_to(np.asarray(value, dtype=params[key].dtype), (n,)).copy()
    return params


class TestDrawTextContract(VariationApiContract):
    @classmethod
    def make_api(cls) -> VariationApi:
        return DrawText(DIGITS)


class TestDrawTextOtherCanvasContract(VariationApiContract):
    n_distance = 32

    @classmethod
    def make_api(cls) -> VariationApi:
        return DrawText(["a", "b"], texts_per_label={"a": ["A", "a"]}, image_size=17)


def test_registered() -> None:
    api = create_api("drawtext", label_names=["0", "1"], font_paths=[dejavu_sans()])
    assert isinstance(api, DrawText)


def test_images_are_grey_white_on_black(digits: DrawText) -> None:
    samples = digits.random(3, 50, np.random.default_rng(0))
    assert samples.images is not None
    assert samples.images.shape == (50, 28, 28, 1)
    assert samples.images.dtype == np.uint8
    corners = samples.images[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
    assert corners.mean() < 10
    brightest = samples.images.reshape(50, -1).max(axis=1)
    # Thin fonts (FreeMono) anti-aliased at small sizes peak lower, but every image has ink.
    assert brightest.min() > 120
    assert np.median(brightest) > 200


def test_params_are_recorded_per_sample(digits: DrawText) -> None:
    samples = digits.random(7, 40, np.random.default_rng(1))
    assert set(samples.params) == set(PARAM_COLUMNS)
    assert set(samples.params["text"].tolist()) == {"7"}
    s = digits.settings
    assert s.font_size_range == (10, 29)
    sizes = samples.params["font_size"]
    assert sizes.min() >= 10 and sizes.max() <= 29 and len(set(sizes.tolist())) > 5
    assert set(samples.params["stroke_width"].tolist()) <= {0, 1, 2}
    assert np.abs(samples.params["rotation"]).max() <= 30.0
    assert np.abs(samples.params["rotation"]).max() > 10.0


def test_font_pool_is_sorted_deduplicated_and_can_draw_digits(digits: DrawText) -> None:
    # Folder by folder in default_font_dirs' order, sorted inside each: the same order wherever
    # the checkout (and matplotlib's fonts in its .venv) lives.
    pool, expected = set(digits.fonts), []
    for folder in default_font_dirs():
        files = sorted(p for p in folder.rglob("*") if p.suffix in (".ttf", ".otf"))
        for path in (str(p.resolve()) for p in files):
            if path in pool and path not in expected:
                expected.append(path)
    assert list(digits.fonts) == expected
    names = [font.name for font in digits.font_pool]
    assert len(set(names)) == len(names)
    assert "DejaVu Sans" in names
    stems = {Path(path).stem for path in digits.fonts}
    # Symbol fonts map digit code points to other glyphs; they must not enter the pool.
    assert not stems & {"cmsy10", "cmex10", "LastResortHE-Regular", "STIXSizOneSymReg"}
    assert discover_fonts(DIGITS) == digits.font_pool


def test_no_usable_font_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PrivevoError, match="no TrueType font"):
        DrawText(DIGITS, font_paths=[])
    with pytest.raises(PrivevoError, match="no TrueType font"):
        DrawText(["glyph"], texts_per_label={"glyph": ["\U00013000"]})  # a hieroglyph
    with pytest.raises(PrivevoError, match="does not exist"):
        DrawText(DIGITS, font_paths=[tmp_path / "missing.ttf"])
    with pytest.raises(PrivevoError, match="no TrueType font"):
        discover_fonts(DIGITS, font_dirs=[tmp_path])


def test_fast_render_matches_pil_reference(digits: DrawText) -> None:
    rng = np.random.default_rng(2)
    population = Samples.concat([digits.random(label, 20, rng) for label in range(10)])
    edges = upright(
        digits,
        ["8", "0", "1", "4"],
        font_size=[10, 29, 29, 10],
        stroke_width=[0, 2, 2, 0],
        rotation=[-30.0, 30.0, 29.5, 0.25],
        offset_x=[-2.0, 2.0, 0.3, -1.7],
        offset_y=[2.0, -2.0, 1.1, 0.0],
    )
    for params in (dict(population.params), edges):
        fast = digits.renderer.render(params)
        slow = digits.renderer.render_reference(params)
        # PIL blends in 8-bit fixed point, we in float32: at most one grey level apart.
        assert np.abs(fast.astype(int) - slow.astype(int)).max() <= 1


def test_render_is_a_pure_function_of_each_row(digits: DrawText) -> None:
    samples = digits.random(5, 300, np.random.default_rng(3))
    params = dict(samples.params)
    assert samples.images is not None
    np.testing.assert_array_equal(digits.renderer.render(params), samples.images)
    order = np.random.default_rng(4).permutation(300)
    shuffled = digits.renderer.render({k: v[order] for k, v in params.items()})
    np.testing.assert_array_equal(shuffled, samples.images[order])
    single = digits.renderer.render({k: v[17:18] for k, v in params.items()})
    np.testing.assert_array_equal(single, samples.images[17:18])


def test_degree_zero_keeps_every_parameter(digits: DrawText) -> None:
    samples = digits.random(2, 30, np.random.default_rng(5))
    varied = digits.variation(samples, 0.0, np.random.default_rng(6))
    for key in PARAM_COLUMNS:
        np.testing.assert_array_equal(varied.params[key], samples.params[key])


def test_variation_keeps_parameters_in_range() -> None:
    api = DrawText(
        DIGITS,
        font_paths=[dejavu_sans()],
        font_redraw_prob=1.0,
        size_step=40.0,
        stroke_step=5.0,
        max_shear=0.3,
        scale_x_range=(0.8, 1.2),
        shear_step=1.0,
        scale_x_step=1.0,
    )
    n = 200
    wild = upright(api, ["3"] * n)
    wild["font_size"] = np.where(np.arange(n) % 2 == 0, 60, 1).astype(np.int64)
    wild["stroke_width"] = np.full(n, 7, dtype=np.int64)
    wild["rotation"] = np.linspace(-90.0, 90.0, n)
    wild["offset_x"] = np.linspace(-9.0, 9.0, n)
    wild["offset_y"] = np.linspace(9.0, -9.0, n)
    wild["shear"] = np.linspace(-2.0, 2.0, n)
    wild["scale_x"] = np.linspace(0.1, 3.0, n)
    samples = Samples(
        ids=np.arange(n).astype(str),
        labels=np.full(n, 3),
        label_names=tuple(DIGITS),
        images=np.zeros((n, 28, 28, 1), dtype=np.uint8),
        params=wild,
    )
    rng = np.random.default_rng(7)
    for _ in range(3):
        samples = api.variation(samples, 1.0, rng)
        p = samples.params
        assert p["font"].min() >= 0 and p["font"].max() < len(api.fonts)
        assert p["font_size"].min() >= 10 and p["font_size"].max() <= 29
        assert p["stroke_width"].min() >= 0 and p["stroke_width"].max() <= 2
        assert np.abs(p["rotation"]).max() <= 30.0
        assert np.abs(p["offset_x"]).max() <= 2.0 and np.abs(p["offset_y"]).max() <= 2.0
        assert np.abs(p["shear"]).max() <= 0.3
        assert p["scale_x"].min() >= 0.8 and p["scale_x"].max() <= 1.2
    # The steps are big enough that clipping must have been hit at both ends.
    assert {10, 29} <= set(samples.params["font_size"].tolist())


def test_variation_steps_grow_with_degree(digits: DrawText) -> None:
    samples = digits.random(4, 400, np.random.default_rng(8))

    def mean_moves(degree: float) -> np.ndarray:
        varied = digits.variation(samples, degree, np.random.default_rng(9))
        return np.array(
            [
                np.mean(varied.params[k] != samples.params[k])
                if k == "font"
                else np.mean(np.abs(varied.params[k] - samples.params[k]))
                for k in ("font", "font_size", "stroke_width", "rotation", "offset_x")
            ]
        )

    low, mid, high = mean_moves(0.2), mean_moves(0.5), mean_moves(1.0)
    assert np.all(low < mid) and np.all(mid < high)


def test_digit_shapes_are_recognisable(one_font: DrawText) -> None:
    images = one_font.renderer.render(upright(one_font, ["1", "8", "0", "7"]))
    ink = images.reshape(4, -1).sum(axis=1).astype(float)
    assert ink[0] < 0.7 * ink[1]
    # "0" is hollow: its centre pixel is dark while the "8" has ink where its loops meet.
    assert images[2, 14, 14, 0] < 60
    assert images[1, 14, 14, 0] > 100
    # "7" has its bar at the top: more ink in the top quarter than in the bottom quarter.
    assert images[3, 4:10].sum() > 2 * images[3, 19:25].sum()


def test_rotation_is_counter_clockwise(one_font: DrawText) -> None:
    api = DrawText(["bar"], texts_per_label={"bar": ["\u2014"]}, font_paths=[dejavu_sans()])
    image = api.renderer.render(upright(api, ["\u2014"], rotation=30.0))[0, :, :, 0]
    ys, xs = np.nonzero(image > 64)
    left, right = ys[xs < 14].mean(), ys[xs >= 14].mean()
    assert right < left - 2  # the right end rose (image rows grow downwards)


def test_positive_shear_leans_right_and_scale_x_widens(one_font: DrawText) -> None:
    api = DrawText(["bar"], texts_per_label={"bar": ["|"]}, font_paths=[dejavu_sans()])
    image = api.renderer.render(upright(api, ["|"], shear=0.5))[0, :, :, 0]
    ys, xs = np.nonzero(image > 64)
    top, bottom = xs[ys < ys.mean()].mean(), xs[ys >= ys.mean()].mean()
    assert top > bottom + 2  # the top moved right (image rows grow downwards)
    plain, wide = one_font.renderer.render(upright(one_font, ["0", "0"], scale_x=[1.0, 1.5]))

    def ink_width(image: np.ndarray) -> int:
        columns = np.flatnonzero(image[:, :, 0].max(axis=0) > 64)
        return int(columns[-1] - columns[0] + 1)

    assert ink_width(wide) / ink_width(plain) == pytest.approx(1.5, abs=0.15)


def test_shear_and_width_render_like_the_pil_reference(one_font: DrawText) -> None:
    params = upright(
        one_font,
        ["2", "7", "4"],
        rotation=[20.0, -10.0, 0.0],
        shear=[0.4, -0.3, 0.0],
        scale_x=[0.7, 1.3, 1.0],
    )
    fast = one_font.renderer.render(params).astype(int)
    assert np.abs(fast - one_font.renderer.render_reference(params).astype(int)).max() <= 1


def test_ink_centre_lands_on_the_offset(one_font: DrawText) -> None:
    images = one_font.renderer.render(
        upright(one_font, ["8", "8"], offset_x=[0.0, 2.0], offset_y=[0.0, -2.0])
    )[:, :, :, 0].astype(float)
    ys, xs = np.mgrid[0:28, 0:28] + 0.5
    centre = [((im * xs).sum() / im.sum(), (im * ys).sum() / im.sum()) for im in images]
    assert centre[0] == pytest.approx((14.0, 14.0), abs=1.0)
    assert centre[1][0] - centre[0][0] == pytest.approx(2.0, abs=0.2)
    assert centre[1][1] - centre[0][1] == pytest.approx(-2.0, abs=0.2)


def test_texts_per_label_and_text_redraw() -> None:
    api = DrawText(
        ["a", "b"],
        texts_per_label={"a": ["A", "a", "ab"]},
        font_paths=[dejavu_sans()],
        text_redraw_prob=1.0,
    )
    rng = np.random.default_rng(10)
    samples = api.random(0, 60, rng)
    assert set(samples.params["text"].tolist()) == {"A", "a", "ab"}
    assert set(api.random(1, 5, rng).params["text"].tolist()) == {"b"}
    varied = api.variation(samples, 1.0, rng)
    assert set(varied.params["text"].tolist()) <= {"A", "a", "ab"}
    assert np.mean(varied.params["text"] != samples.params["text"]) > 0.4
    with pytest.raises(ValueError, match="unknown labels"):
        DrawText(["a"], texts_per_label={"z": ["Z"]}, font_paths=[dejavu_sans()])


def test_canvas_size_scales_the_default_ranges() -> None:
    api = DrawText(["0"], font_paths=[dejavu_sans()], image_size=56)
    assert api.settings.font_size_range == (20, 58)
    assert api.settings.max_offset == pytest.approx(4.0)
    samples = api.random(0, 3, np.random.default_rng(11))
    assert samples.images is not None and samples.images.shape == (3, 56, 56, 1)


def test_variation_needs_drawtext_params(digits: DrawText) -> None:
    foreign = Samples(
        ids=np.array(["x"]),
        labels=np.array([0]),
        label_names=tuple(DIGITS),
        images=np.zeros((1, 28, 28, 1), dtype=np.uint8),
    )
    with pytest.raises(PrivevoError, match="parameter columns"):
        digits.variation(foreign, 0.5, np.random.default_rng(0))


def test_font_index_outside_the_pool_is_rejected(one_font: DrawText) -> None:
    with pytest.raises(PrivevoError, match="font index 3"):
        one_font.renderer.render(upright(one_font, ["1"], font=3))


def test_glyph_masks_equal_the_imagedraw_reference(digits: DrawText) -> None:
    # The fast mask skips ImageDraw's canvas; it must be the very bitmap ImageDraw draws, for
    # every font in the pool (outlines differ: TrueType, CFF, hinted or not).
    renderer = digits.renderer
    for font in range(len(digits.fonts)):
        for size, stroke, text in ((10, 0, "8"), (29, 2, "0"), (17, 1, "4")):
            np.testing.assert_array_equal(
                renderer.glyph_mask(font, size, stroke, text),
                renderer.glyph_mask_reference(font, size, stroke, text),
                err_msg=f"{digits.fonts[font]} size {size} stroke {stroke} text {text!r}",
            )
    api = DrawText(["w"], texts_per_label={"w": ["Wg", " ", "-"]}, font_paths=[dejavu_sans()])
    for size, stroke, text in ((1, 0, "Wg"), (40, 3, "Wg"), (20, 1, " "), (9, 2, "-")):
        np.testing.assert_array_equal(
            api.renderer.glyph_mask(0, size, stroke, text),
            api.renderer.glyph_mask_reference(0, size, stroke, text),
        )


def test_rendering_keeps_no_font_face_open(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every open FreeType face maps its font file (~125 KB resident each); a run meets
    # thousands of (font, size) pairs, so faces must not outlive the render that needed them.
    opened: weakref.WeakSet[ImageFont.FreeTypeFont] = weakref.WeakSet()
    count = 0
    truetype = ImageFont.truetype

    def tracked(*args: object, **kwargs: object) -> ImageFont.FreeTypeFont:
        nonlocal count
        face = truetype(*args, **kwargs)  # type: ignore[arg-type]
        opened.add(face)
        count += 1
        return face

    monkeypatch.setattr(ImageFont, "truetype", tracked)
    api = DrawText(DIGITS, font_paths=[dejavu_sans()])  # a fresh glyph cache
    samples = api.random(6, 300, np.random.default_rng(12))
    api.variations(samples, 1.0, np.random.default_rng(13), 3)
    gc.collect()
    assert count >= 10  # one face per size at least
    assert len(opened) == 0


def test_variations_are_the_single_calls_bit_for_bit(digits: DrawText) -> None:
    population = Samples.concat(
        [digits.random(label, 30, np.random.default_rng(label)) for label in (1, 7)]
    )
    batched_rng, single_rng = np.random.default_rng(14), np.random.default_rng(14)
    batched = digits.variations(population, 0.7, batched_rng, 4)
    singles = [digits.variation(population, 0.7, single_rng) for _ in range(4)]
    assert len(batched) == 4
    for got, want in zip(batched, singles, strict=True):
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.images, want.images)
        assert set(got.params) == set(want.params)
        for key in PARAM_COLUMNS:
            np.testing.assert_array_equal(got.params[key], want.params[key])
    # Both drew the same numbers: the generators are left in the same state.
    assert batched_rng.integers(2**62) == single_rng.integers(2**62)
    assert digits.variations(population, 0.7, batched_rng, 0) == []
