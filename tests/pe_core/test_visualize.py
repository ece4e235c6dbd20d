from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from pe_core.samples import Samples, new_ids
from pe_core.visualize import (
    MIN_TILE_PX,
    PAD_PX,
    save_image_grid,
    save_series_plot,
    save_text_sample,
    tile_scale,
)

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def draw_digits(labels: list[int], *, size: int = 28) -> np.ndarray:
    """White digits on black, like MNIST, drawn with a real font: (n, size, size, 1) uint8."""
    font = ImageFont.truetype(str(FONT), 22)
    images = []
    for i, label in enumerate(labels):
        canvas = Image.new("L", (size, size), 0)
        # Small per-sample offsets so two samples of one label are not identical.
        ImageDraw.Draw(canvas).text(
            (size / 2 + i % 3 - 1, size / 2), str(label), fill=255, font=font, anchor="mm"
        )
        images.append(np.asarray(canvas))
    return np.stack(images)[..., None]


def digit_samples(labels: list[int], names: tuple[str, ...]) -> Samples:
    return Samples(
        ids=new_ids(np.random.default_rng(0), len(labels)),
        labels=np.asarray(labels),
        label_names=names,
        images=draw_digits(labels),
    )


def open_png(path: Path) -> Image.Image:
    """Decodes a PNG fully and closes the file (pytest turns unclosed files into errors)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


def cell_box(image: Image.Image, row: int, col: int, per_label: int, tile: int, top: int = 0):
    """Pixel box of a cell, located from the right edge so the label column width is not needed."""
    left = image.width - (per_label - col) * (tile + PAD_PX)
    upper = top + PAD_PX + row * (tile + PAD_PX)
    return left, upper, left + tile, upper + tile


def test_tile_scale_makes_small_images_large():
    assert tile_scale(28, 28) == 3
    assert tile_scale(8, 8) * 8 >= MIN_TILE_PX
    assert tile_scale(256, 128) == 1


def test_image_grid_geometry_and_content(tmp_path):
    labels = [0, 0, 0, 1, 2, 2]  # label 1 has one sample, label 3 none
    samples = digit_samples(labels, ("zero", "one", "two", "three"))
    path = tmp_path / "grid.png"
    save_image_grid(samples, path, per_label=3)
    grid = open_png(path)
    tile = 28 * tile_scale(28, 28)
    assert grid.height == PAD_PX + 4 * (tile + PAD_PX)
    pixels = np.asarray(grid.convert("RGB"))
    cells = {
        (r, c): pixels[b[1] : b[3], b[0] : b[2]]
        for r in range(4)
        for c in range(3)
        for b in [cell_box(grid, r, c, 3, tile)]
    }
    # Filled cells show the upscaled sample exactly (nearest neighbour, grey to RGB).
    expected = np.repeat(np.repeat(samples.images[3, :, :, 0], 3, axis=0), 3, axis=1)
    np.testing.assert_array_equal(cells[(1, 0)][..., 0], expected)
    np.testing.assert_array_equal(
        cells[(0, 1)][..., 1], np.kron(samples.images[1, :, :, 0], np.ones((3, 3)))
    )
    # Different digits give different rows; blanks are uniform and unlike any sample.
    assert not np.array_equal(cells[(0, 0)], cells[(2, 0)])
    blank = cells[(3, 0)]
    assert (blank == blank[0, 0]).all()
    assert blank[0, 0, 0] not in (0, 255)
    for col in (1, 2):
        np.testing.assert_array_equal(cells[(1, col)], blank)
    # The label column holds dark text pixels.
    label_column = pixels[:, : grid.width - 3 * (tile + PAD_PX)]
    assert (label_column < 128).any()

    wider = tmp_path / "wider.png"
    save_image_grid(samples, wider, per_label=5)
    assert open_png(wider).width - grid.width == 2 * (tile + PAD_PX)


def test_image_grid_with_scores_shows_the_best_samples_first(tmp_path):
    samples = digit_samples([0, 0, 0, 1], ("zero", "one"))
    scores = [1.0, 7.5, 3.0, 2.0]
    plain, scored = tmp_path / "plain.png", tmp_path / "scored.png"
    save_image_grid(samples, plain, per_label=2, title="Iteration 3")
    save_image_grid(samples, scored, per_label=2, title="Iteration 3", scores=scores)
    plain_img, scored_img = open_png(plain), open_png(scored)
    assert plain_img.width == scored_img.width
    assert scored_img.height > plain_img.height  # caption strips under each row

    tile = 28 * tile_scale(28, 28)
    title_h = plain_img.height - (PAD_PX + 2 * (tile + PAD_PX))
    assert title_h > 0
    box = cell_box(scored_img, 0, 0, 2, tile, top=title_h)
    first = np.asarray(scored_img.convert("L").crop(box))
    np.testing.assert_array_equal(first, np.kron(samples.images[1, :, :, 0], np.ones((3, 3))))


def test_a_long_title_widens_the_grid_without_moving_cells(tmp_path):
    samples = digit_samples([0, 1], ("zero", "one"))
    short, long = tmp_path / "short.png", tmp_path / "long.png"
    save_image_grid(samples, short, per_label=1, title="t")
    save_image_grid(samples, long, per_label=1, title="a title much wider than one column " * 2)
    short_img, long_img = open_png(short), open_png(long)
    assert long_img.height == short_img.height
    assert long_img.width > short_img.width + 300
    np.testing.assert_array_equal(
        np.asarray(long_img)[:, : short_img.width][30:], np.asarray(short_img)[30:]
    )


def test_image_grid_accepts_rgb(tmp_path):
    images = np.zeros((2, 10, 12, 3), dtype=np.uint8)
    images[0, ..., 0] = 255
    images[1, ..., 2] = 255
    samples = Samples(
        ids=new_ids(np.random.default_rng(1), 2),
        labels=np.array([0, 1]),
        label_names=("red", "blue"),
        images=images,
    )
    path = tmp_path / "rgb.png"
    save_image_grid(samples, path, per_label=1)
    grid = np.asarray(open_png(path).convert("RGB"))
    scale = tile_scale(10, 12)
    right = grid[:, -PAD_PX - 1]  # last pixel column of the only cell column
    top = PAD_PX + 5 * scale
    assert tuple(right[top]) == (255, 0, 0)
    assert tuple(right[top + 10 * scale + PAD_PX]) == (0, 0, 255)


def test_image_grid_rejects_bad_input(tmp_path):
    texts = Samples(
        ids=new_ids(np.random.default_rng(2), 1), labels=[0], label_names=("a",), texts=["x"]
    )
    with pytest.raises(ValueError, match="image samples"):
        save_image_grid(texts, tmp_path / "x.png")
    samples = digit_samples([0, 1], ("a", "b"))
    with pytest.raises(ValueError, match="2 samples"):
        save_image_grid(samples, tmp_path / "x.png", scores=[1.0])


def test_text_sample_lists_a_few_texts_per_label(tmp_path):
    samples = Samples(
        ids=new_ids(np.random.default_rng(3), 5),
        labels=np.array([0, 0, 0, 0, 2]),
        label_names=("sport", "politics", "tech"),
        texts=["a1", "a2\nsecond line", "a3", "a4", "Zürich café ✓"],
    )
    path = tmp_path / "sub" / "texts.md"
    save_text_sample(samples, path, per_label=3)
    content = path.read_bytes().decode("utf-8")
    assert content.startswith("# Text samples\n")
    assert "## sport (4 samples)" in content
    assert "> a2\n> second line" in content
    assert "> a3" in content
    assert "a4" not in content
    assert "## politics (0 samples)\n\n_(no samples)_" in content
    assert "> Zürich café ✓" in content
    assert content.index("## sport") < content.index("## politics") < content.index("## tech")


def test_series_plot_writes_a_png(tmp_path):
    path = tmp_path / "plot.png"
    save_series_plot(
        {"accuracy": [0.2, 0.5, 0.7, 0.75], "sigma": [6.4, 6.4, 6.4]},
        path,
        title="metrics",
        ylabel="score",
        first_x=1,
    )
    plot = open_png(path)
    assert plot.size == (640, 400)
    pixels = np.asarray(plot.convert("RGB")).astype(int)
    # Two differently coloured lines: some strongly saturated pixels exist.
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 100).sum() > 200
    with pytest.raises(ValueError, match="at least one series"):
        save_series_plot({}, path, title="empty")
