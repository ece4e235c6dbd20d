from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from sklearn.exceptions import ConvergenceWarning

from pe_core import metrics
from pe_core.errors import DataError
from pe_core.metrics import (
    downstream_scores,
    evaluate,
    frechet_distance,
    memorisation,
    precision_recall,
    record_hashes,
    refuse_overlap,
)
from pe_core.samples import Samples, new_ids


def _clusters(rng: np.random.Generator, n_per_class: int, n_classes: int, dim: int, spread: float):
    centres = rng.normal(scale=spread, size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels


# --- downstream accuracy ---------------------------------------------------------------------


def test_accuracy_is_high_on_separable_classes_and_near_chance_on_shuffled_labels():
    rng = np.random.default_rng(0)
    x, y = _clusters(rng, 100, 4, 8, spread=6.0)
    test_x, test_y = x[1::2], y[1::2]
    train_x, train_y = x[::2], y[::2]
    assert downstream_scores(train_x, train_y, test_x, test_y).accuracy > 0.95
    shuffled = rng.permutation(train_y)
    assert downstream_scores(train_x, shuffled, test_x, test_y).accuracy < 0.5


def test_single_training_class_predicts_that_class():
    train_x = np.ones((5, 3))
    test_y = np.array([2, 2, 0, 1])
    accuracy = downstream_scores(train_x, np.full(5, 2), np.zeros((4, 3)), test_y).accuracy
    assert accuracy == 0.5


def test_accuracy_retries_with_more_iterations_instead_of_warning(monkeypatch):
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, 60, 3, 10, spread=1.0)
    reference = downstream_scores(x, y, x, y).accuracy
    # One lbfgs iteration never converges here; the retry must absorb that without a warning
    # (pytest turns warnings into errors) and reach the same model.
    monkeypatch.setattr(metrics, "_MAX_ITERS", (1, 10_000))
    assert downstream_scores(x, y, x, y).accuracy == reference


def test_accuracy_reissues_the_warning_when_no_budget_converges(monkeypatch):
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, 60, 3, 10, spread=1.0)
    monkeypatch.setattr(metrics, "_MAX_ITERS", (1,))
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        downstream_scores(x, y, x, y)


def test_macro_f1_counts_every_test_class_and_a_majority_guess_scores_low():
    # Trained on one class only: it predicts 0 everywhere. Test labels 0, 0, 0, 1: accuracy
    # 0.75; F1 of class 0 is 2 * 0.75 * 1 / 1.75 = 6/7, of class 1 (never predicted) 0.
    scores = downstream_scores(np.ones((5, 2)), np.zeros(5), np.zeros((4, 2)), [0, 0, 0, 1])
    assert scores.accuracy == 0.75
    assert scores.macro_f1 == pytest.approx((6 / 7 + 0.0) / 2)
    rng = np.random.default_rng(0)
    x, y = _clusters(rng, 100, 4, 8, spread=6.0)
    separable = downstream_scores(x[::2], y[::2], x[1::2], y[1::2])
    assert separable.macro_f1 > 0.95


def test_scores_do_not_depend_on_the_order_records_were_read_in():
    rng = np.random.default_rng(3)
    x, y = _clusters(rng, 300, 5, 12, spread=1.5)  # overlapping: lbfgs sums matter
    train, test = slice(0, 200), slice(200, 300)
    reference = downstream_scores(x[train], y[train], x[test], y[test])
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(200)
        shuffled = downstream_scores(x[train][order], y[train][order], x[test], y[test])
        assert shuffled == reference


def test_accuracy_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="dimension"):
        downstream_scores(np.zeros((4, 2)), [0, 1, 0, 1], np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="same number of rows"):
        downstream_scores(np.zeros((4, 2)), [0, 1, 0], np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="non-empty"):
        downstream_scores(np.zeros((0, 2)), [], np.zeros((2, 2)), [0, 1])


# --- Frechet distance ------------------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
    emb = np.random.default_rng(2).normal(size=(300, 16))
    assert frechet_distance(emb, emb) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_shift_is_the_squared_shift_norm():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    shift = rng.normal(size=12)
    assert frechet_distance(emb, emb + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_frechet_distance_is_symmetric_and_matches_scipy_sqrtm():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(loc=0.5, size=(300, 6)) * np.linspace(0.5, 2.0, 6)
    forward, backward = frechet_distance(a, b), frechet_distance(b, a)
    assert forward == pytest.approx(backward, rel=1e-10)
    # Independent reference: the textbook formula with a general matrix square root.
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = scipy.linalg.sqrtm(cov_a @ cov_b).real
    gap = a.mean(0) - b.mean(0)
    expected = gap @ gap + np.trace(cov_a + cov_b - 2 * cross)
    assert forward == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    # With diagonal covariances the distance is ||mu_a - mu_b||^2 + sum (s_a - s_b)^2 (std devs).
    base = np.random.default_rng(5).normal(size=(5000, 3))
    base = (base - base.mean(0)) / base.std(0, ddof=1)
    base = base @ np.linalg.inv(np.linalg.cholesky(np.cov(base, rowvar=False))).T
    std_a, std_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    mu_b = np.array([1.0, -2.0, 0.0])
    expected = mu_b @ mu_b + np.sum((std_a - std_b) ** 2)
    assert frechet_distance(base * std_a, base * std_b + mu_b) == pytest.approx(expected)


def test_frechet_distance_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(10, 64)), rng.normal(size=(12, 64))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    value = frechet_distance(a, b)
    assert np.isfinite(value)
    assert value > 0
    assert value == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2)))


# --- precision and recall --------------------------------------------------------------------


def _reference_precision_recall(real, synth, k):
    def radii(points):
        dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
        return np.sort(dist, axis=1)[:, k]

    cross = np.sqrt(((synth[:, None] - real[None]) ** 2).sum(-1))
    precision = (cross <= radii(real)[None]).any(1).mean()
    real_to_synth = cross.T
    recall = (real_to_synth <= radii(synth)[None]).any(1).mean()
    return precision, recall


def test_identical_sets_have_full_precision_and_recall():
    emb = np.random.default_rng(7).normal(size=(50, 4))
    assert precision_recall(emb, emb.copy()) == (1.0, 1.0)


def test_far_apart_sets_have_zero_precision_and_recall():
    rng = np.random.default_rng(8)
    real, synth = rng.normal(size=(40, 4)), rng.normal(size=(30, 4)) + 100.0
    assert precision_recall(real, synth) == (0.0, 0.0)


def test_half_off_manifold_synthetic_set():
    rng = np.random.default_rng(9)
    real = rng.normal(size=(200, 3))
    synth = np.concatenate([real[:100], rng.normal(size=(100, 3)) + 50.0])
    precision, recall = precision_recall(real, synth, k=3)
    assert precision == 0.5
    assert 0.5 <= recall < 1.0


@pytest.mark.parametrize("k", [1, 3, 5])
def test_blocked_precision_recall_matches_a_dense_reference(monkeypatch, k):
    rng = np.random.default_rng(10 + k)
    real = rng.normal(size=(37, 5))
    synth = rng.normal(loc=0.7, scale=1.3, size=(29, 5))
    synth[:4] = real[:4]  # exact matches sit on the boundary case dist == 0
    expected = _reference_precision_recall(real, synth, k)
    assert precision_recall(real, synth, k=k) == pytest.approx(expected)
    monkeypatch.setattr(metrics, "_BLOCK_ENTRIES", 7 * len(real))  # blocks of 7 rows, ragged end
    assert precision_recall(real, synth, k=k) == pytest.approx(expected)


def test_manifold_balls_are_closed():
    # Four copies of 0 give each other radius 0 (k=3), so a synthetic 0 lies exactly on the
    # boundary; the synthetic 50 has radius 50 and reaches the real 100 exactly (Eq. 1: <=).
    real = np.array([0.0, 0, 0, 0, 100, 101, 102, 103])[:, None]
    synth = np.array([0.0, 0, 0, 0, 50])[:, None]
    assert precision_recall(real, synth, k=3) == (4 / 5, 5 / 8)


def test_precision_recall_needs_more_than_k_samples():
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


# --- overlap guard ---------------------------------------------------------------------------


def _image_samples(images: np.ndarray, labels, seed: int) -> Samples:
    return Samples(
        ids=new_ids(np.random.default_rng(seed), len(images)),
        labels=np.asarray(labels),
        label_names=("a", "b"),
        images=images,
    )


def _text_samples(texts, seed: int) -> Samples:
    return Samples(
        ids=new_ids(np.random.default_rng(seed), len(texts)),
        labels=np.zeros(len(texts), dtype=np.int64),
        label_names=("only",),
        texts=texts,
    )


def test_record_hashes_depend_on_content_only():
    images = np.random.default_rng(11).integers(0, 256, size=(3, 4, 4, 1), dtype=np.uint8)
    edited = images.copy()
    edited[2, 0, 0, 0] ^= 1
    first = _image_samples(images, [0, 1, 0], seed=1)
    relabelled = _image_samples(images, [1, 1, 1], seed=2)
    assert record_hashes(first) == record_hashes(relabelled)
    assert len(record_hashes(first) & record_hashes(_image_samples(edited, [0, 1, 0], 3))) == 2
    assert len(record_hashes(_text_samples(["x", "y", "x"], 4))) == 2


def test_refuse_overlap_accepts_disjoint_sets():
    refuse_overlap(_text_samples(["secret one", "secret two"], 1), _text_samples(["public"], 2))


def test_refuse_overlap_rejects_a_shared_text_without_printing_it():
    private = _text_samples(["patient 17 has condition X", "other"], 1)
    evaluation = _text_samples(["held out", "patient 17 has condition X"], 2)
    with pytest.raises(DataError, match="held-out") as caught:
        refuse_overlap(private, evaluation)
    assert "patient" not in str(caught.value)
    assert "1 evaluation record" in str(caught.value)


def test_refuse_overlap_rejects_a_shared_image_under_another_id_and_label():
    images = np.random.default_rng(12).integers(0, 256, size=(4, 5, 5, 1), dtype=np.uint8)
    private = _image_samples(images[:3], [0, 0, 1], seed=1)
    evaluation = _image_samples(images[2:], [0, 1], seed=2)
    with pytest.raises(DataError, match="disjoint"):
        refuse_overlap(private, evaluation)


# --- evaluate --------------------------------------------------------------------------------


def _digit_like(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """8x8 images whose bright column is the label, plus noise: an easy, learnable task."""
    images = rng.integers(0, 60, size=(len(labels), 8, 8, 1))
    images[np.arange(len(labels)), :, labels * 3, 0] += 190
    return images.astype(np.uint8)


def _flatten(samples: Samples) -> np.ndarray:
    assert samples.images is not None
    return samples.images.reshape(len(samples), -1).astype(np.float32) / 255


def test_evaluate_reports_every_metric_in_the_feature_space():
    rng = np.random.default_rng(13)
    labels = np.repeat([0, 1], 40)
    synthetic = _image_samples(_digit_like(rng, labels), labels, seed=1)
    evaluation = _image_samples(_digit_like(rng, labels), labels, seed=2)
    result = evaluate(synthetic, evaluation, _flatten)
    assert set(result) == {"accuracy", "macro_f1", "fid", "precision", "recall"}
    assert result["accuracy"] == result["macro_f1"] == 1.0
    assert result["fid"] > 0
    assert 0 <= result["precision"] <= 1
    assert 0 <= result["recall"] <= 1

    # Every score, the random subsets of precision and recall included, is the same for the
    # same records in another order.
    order = np.random.default_rng(4).permutation(len(labels))
    assert synthetic.images is not None
    reordered = _image_samples(synthetic.images[order], labels[order], seed=1)
    assert evaluate(reordered, evaluation, _flatten, max_manifold=30) == evaluate(
        synthetic, evaluation, _flatten, max_manifold=30
    )

    copy = _image_samples(evaluation.images, labels, seed=3)
    same = evaluate(copy, evaluation, _flatten)
    assert same["fid"] == pytest.approx(0.0, abs=1e-8)
    assert (same["precision"], same["recall"]) == (1.0, 1.0)


def test_evaluate_rejects_a_different_label_set():
    rng = np.random.default_rng(14)
    labels = np.repeat([0, 1], 5)
    synthetic = _image_samples(_digit_like(rng, labels), labels, seed=1)
    other = Samples(
        ids=new_ids(rng, 10), labels=labels, label_names=("x", "y"), images=synthetic.images
    )
    with pytest.raises(ValueError, match="label set"):
        evaluate(synthetic, other, _flatten)


def test_memorisation_tells_copies_from_fresh_samples():
    rng = np.random.default_rng(0)
    private = rng.normal(size=(400, 8)).astype(np.float32)
    heldout = rng.normal(size=(400, 8)).astype(np.float32)
    fresh = memorisation(rng.normal(size=(300, 8)).astype(np.float32), private, heldout)
    assert fresh.baseline == 0.5 and abs(fresh.closer_to_private - 0.5) < 0.1
    copies = memorisation(private[:300] + np.float32(1e-3), private, heldout)
    assert copies.closer_to_private == 1.0
    np.testing.assert_array_equal(copies.closest_private, np.arange(300))
    np.testing.assert_allclose(copies.to_private, 1e-3 * np.sqrt(8), rtol=1e-3)
