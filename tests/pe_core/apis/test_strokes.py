from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pe_core.apis import DrawText, Strokes, create_api
from pe_core.apis.base import VariationApi
from pe_core.apis.strokes import DIGIT_STYLES, PARAM_COLUMNS, catmull_rom
from pe_core.errors import PrivevoError
from pe_core.samples import DataShape, Samples
from tests.pe_core.apis.test_drawtext import dejavu_sans
from tests.pe_core.contracts import VariationApiContract

DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits() -> Strokes:
    return Strokes(DIGITS)


def plain(api: Strokes, labels: list[int], **overrides: object) -> dict[str, np.ndarray]:
    """Parameters of each label's first style, unmoved, upright and centred, pen 3 px."""
    n = len(labels)
    params: dict[str, np.ndarray] = {
        "style": np.zeros(n, dtype=np.int64),
        "jitter": np.zeros((n, 2 * api.max_knots)),
        "pen": np.full(n, 3.0),
        "slant": np.zeros(n),
        "rotation": np.zeros(n),
        "aspect": np.ones(n),
        "offset_x": np.zeros(n),
        "offset_y": np.zeros(n),
    }
    for key, value in overrides.items():
        params[key] = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
    return params


def ink_box(image: np.ndarray, level: int = 40) -> tuple[int, int]:
    """Height and width of the pixels above ``level``."""
    rows, cols = np.nonzero(image[..., 0] > level)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(x, y) of the ink's centre of mass, pixel centres at +0.5."""
    ink = image[..., 0].astype(np.float64)
    ys, xs = np.indices(ink.shape)
    return float((xs * ink).sum() / ink.sum() + 0.5), float((ys * ink).sum() / ink.sum() + 0.5)


class TestStrokesContract(VariationApiContract):
    @classmethod
    def make_api(cls) -> VariationApi:
        return Strokes(DIGITS)


class TestStrokesOtherCanvasContract(VariationApiContract):
    n_distance = 32

    @classmethod
    def make_api(cls) -> VariationApi:
        return Strokes(["7", "1"], image_size=20)


def test_registered() -> None:
    assert isinstance(create_api("strokes", label_names=["0", "1"]), Strokes)


def test_every_digit_has_styles_whose_strokes_have_knots() -> None:
    assert sorted(DIGIT_STYLES) == DIGITS
    for styles in DIGIT_STYLES.values():
        assert styles
        for style in styles:
            for stroke in style:
                assert len(stroke) >= 2
                for x, y in stroke:
                    assert 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0


def test_open_spline_passes_through_its_knots_in_order() -> None:
    knots = np.array([[0.0, 0.0], [1.0, 0.5], [0.3, 1.0], [0.8, 1.4]])
    curve = catmull_rom(knots, closed=False)
    spans = len(knots) - 1
    assert len(curve) == spans * 6 + 1
    np.testing.assert_allclose(curve[::6], knots, atol=1e-12)


def test_closed_spline_ends_where_it_starts_and_passes_through_every_knot() -> None:
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    curve = catmull_rom(square, closed=True)
    np.testing.assert_allclose(curve[::6], np.concatenate([square, square[:1]]), atol=1e-12)
    # Between knots the loop bulges outwards (a smooth curve, not the square's edges).
    assert curve[:, 1].min() < 0.0 and curve[:, 0].max() > 1.0


def test_spline_is_the_catmull_rom_formula_at_mid_span() -> None:
    knots = np.array([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0], [4.0, 4.0]])
    curve = catmull_rom(knots, closed=False)
    p0, p1, p2, p3 = knots
    # At t = 1/2 the uniform Catmull-Rom point is (-p0 + 9 p1 + 9 p2 - p3) / 16.
    np.testing.assert_allclose(curve[6 + 3], (-p0 + 9 * p1 + 9 * p2 - p3) / 16, atol=1e-12)


def test_two_knots_are_a_straight_segment() -> None:
    segment = np.array([[0.2, 0.1], [0.4, 0.9]])
    np.testing.assert_array_equal(catmull_rom(segment, closed=False), segment)


def test_images_are_grey_white_on_black_with_the_mnist_box(digits: Strokes) -> None:
    images = digits.render(np.arange(10), plain(digits, list(range(10))))
    assert images.dtype == np.uint8 and images.shape == (10, 28, 28, 1)
    for label, image in enumerate(images):
        height, width = ink_box(image)
        # The longer side of the ink box is 20 px, as in MNIST (to the anti-aliased edge).
        assert 19 <= max(height, width) <= 21, (label, height, width)
        assert image.max() == 255
        # The digit fits on the canvas: next to no ink on its outermost pixels.
        ink = image[..., 0].astype(np.float64)
        assert ink.sum() - ink[1:-1, 1:-1].sum() < 0.01 * ink.sum()


def test_centre_of_mass_lands_on_the_centre_pixel_plus_the_offset(digits: Strokes) -> None:
    shifts = [(0.0, 0.0), (0.5, -0.5), (-0.25, 0.5)]
    params = plain(digits, [5] * 3)
    params["offset_x"] = np.array([dx for dx, _ in shifts])
    params["offset_y"] = np.array([dy for _, dy in shifts])
    for image, (dx, dy) in zip(digits.render(np.full(3, 5), params), shifts, strict=True):
        cx, cy = centre_of_mass(image)
        # Pixel (14, 14) spans 14 to 15.
        assert cx == pytest.approx(14.5 + dx, abs=0.2) and cy == pytest.approx(14.5 + dy, abs=0.2)


def test_a_wider_pen_draws_more_ink(digits: Strokes) -> None:
    thin = digits.render(np.array([8]), plain(digits, [8], pen=1.5))
    thick = digits.render(np.array([8]), plain(digits, [8], pen=4.0))
    assert thick.sum() > 1.5 * thin.sum()


def test_digit_shapes_are_recognisable(digits: Strokes) -> None:
    images = digits.render(np.array([1, 8, 0, 7]), plain(digits, [1, 8, 0, 7]))
    ink = images.reshape(4, -1).sum(axis=1).astype(float)
    assert ink[0] < 0.5 * ink[1]
    # "0" is hollow where the "8" crosses itself.
    assert images[2, 14, 14, 0] < 60
    assert images[1, 13:16, 13:16, 0].max() > 150
    # "7" has its bar at the top: more ink in the top quarter of its rows than in the bottom one.
    rows = images[3, :, :, 0].sum(axis=1)[np.flatnonzero(images[3, :, :, 0].sum(axis=1))]
    quarter = len(rows) // 4
    assert rows[:quarter].sum() > 2 * rows[-quarter:].sum()


def test_slant_leans_right_and_rotation_turns_counter_clockwise(digits: Strokes) -> None:
    def top_minus_bottom_x(image: np.ndarray) -> float:
        ink = image[..., 0].astype(np.float64)
        xs = np.arange(ink.shape[1])
        top, bottom = ink[4:12], ink[16:24]
        return float((top * xs).sum() / top.sum() - (bottom * xs).sum() / bottom.sum())

    one = digits.render(np.array([1, 1, 1]), plain(digits, [1, 1, 1], slant=[0.0, 0.4, 0.0]))
    turned = digits.render(np.array([1]), plain(digits, [1], rotation=15.0))
    assert abs(top_minus_bottom_x(one[0])) < 1.0
    assert top_minus_bottom_x(one[1]) > 2.0
    # Turned counter-clockwise, an upright bar's top moves left.
    assert top_minus_bottom_x(turned[0]) < -1.0


def test_render_is_a_pure_function_of_each_row(digits: Strokes) -> None:
    samples = digits.random(3, 20, np.random.default_rng(1))
    params = {key: samples.params[key][7:8] for key in PARAM_COLUMNS}
    np.testing.assert_array_equal(digits.render(samples.labels[7:8], params), samples.images[7:8])


def test_degree_zero_keeps_every_parameter(digits: Strokes) -> None:
    samples = digits.random(2, 30, np.random.default_rng(5))
    varied = digits.variation(samples, 0.0, np.random.default_rng(6))
    for key in PARAM_COLUMNS:
        np.testing.assert_array_equal(varied.params[key], samples.params[key])


def test_variation_keeps_parameters_in_range() -> None:
    api = Strokes(
        DIGITS,
        style_redraw_prob=1.0,
        jitter_step=1.0,
        pen_step=10.0,
        slant_step=2.0,
        rotation_step=90.0,
        aspect_step=2.0,
        offset_step=5.0,
    )
    s = api.settings
    rng = np.random.default_rng(7)
    samples = api.random(9, 200, rng)
    for _ in range(3):
        samples = api.variation(samples, 1.0, rng)
        p = samples.params
        assert p["style"].min() >= 0 and p["style"].max() < len(DIGIT_STYLES["9"])
        assert np.abs(p["jitter"]).max() <= s.max_jitter
        assert s.pen_range[0] <= p["pen"].min() and p["pen"].max() <= s.pen_range[1]
        assert np.abs(p["slant"]).max() <= s.max_slant
        assert np.abs(p["rotation"]).max() <= s.max_rotation
        assert s.aspect_range[0] <= p["aspect"].min() and p["aspect"].max() <= s.aspect_range[1]
        assert np.abs(p["offset_x"]).max() <= s.max_offset
    # The steps are big enough that clipping must have been hit.
    assert np.isclose(np.abs(samples.params["rotation"]), s.max_rotation).any()


def test_variation_steps_grow_with_degree(digits: Strokes) -> None:
    samples = digits.random(4, 400, np.random.default_rng(8))

    def mean_moves(degree: float) -> np.ndarray:
        varied = digits.variation(samples, degree, np.random.default_rng(9))
        return np.array(
            [
                np.abs(varied.params[key] - samples.params[key]).mean()
                for key in PARAM_COLUMNS
                if key != "style"
            ]
        )

    low, mid, high = mean_moves(0.2), mean_moves(0.5), mean_moves(1.0)
    assert np.all(low < mid) and np.all(mid < high)


def test_a_classifier_of_strokes_reads_typeset_digits() -> None:
    """An independent check that the shapes are the digits: a linear classifier trained on
    random stroke digits reads typeset ones (drawtext's font pool, upright, about MNIST's
    size) far above chance (0.1; 0.67-0.70 when written)."""
    api = Strokes(DIGITS)
    rng = np.random.default_rng(10)
    train = Samples.concat([api.random(label, 100, rng) for label in range(10)])
    model = LogisticRegression(max_iter=2000).fit(
        train.images.reshape(len(train), -1) / 255.0, train.labels
    )
    typeset = DrawText(
        DIGITS,
        font_size_range=(24, 24),
        stroke_width_range=(1, 1),
        max_rotation=0.0,
        max_offset=0.0,
        max_shear=0.0,
        scale_x_range=(1.0, 1.0),
    )
    fonts = Samples.concat([typeset.random(label, 30, rng) for label in range(10)])
    predicted = model.predict(fonts.images.reshape(len(fonts), -1) / 255.0)
    assert np.mean(predicted == fonts.labels) >= 0.5


def test_labels_that_are_not_digits_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\['cat'\] are not digits"):
        Strokes(["1", "cat"])
    problems = Strokes.refusals({}, DataShape("image", ("1", "cat"), (28, 28, 1)))
    assert len(problems) == 1 and "use drawtext" in problems[0]


def test_other_image_sizes_are_refused_with_the_fix() -> None:
    problems = Strokes.refusals({}, DataShape("image", ("1", "2"), (32, 32, 1)))
    assert problems == [
        "api: strokes draws 28x28 grayscale images but the dataset's are 32x32 with 1 "
        "channel(s): set api_config.image_size: 32"
    ]
    assert Strokes.refusals({"image_size": 32}, DataShape("image", ("1", "2"), (32, 32, 1))) == []


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"pen_range": (3.0, 1.0)}, "pen_range"),
        ({"box": 40.0}, "box"),
        ({"style_redraw_prob": 1.5}, "style_redraw_prob"),
        ({"jitter_step": -0.1}, "jitter_step"),
        ({"image_size": 4}, "image_size"),
    ],
)
def test_settings_out_of_range_are_rejected(option: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Strokes(DIGITS, **option)  # type: ignore[arg-type]


def test_variation_needs_strokes_params(digits: Strokes) -> None:
    drawn = DrawText(DIGITS, font_paths=[dejavu_sans()]).random(0, 2, np.random.default_rng(0))
    with pytest.raises(PrivevoError, match="made by the strokes API"):
        digits.variation(drawn, 0.5, np.random.default_rng(1))
