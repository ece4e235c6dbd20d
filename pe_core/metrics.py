"""Quality metrics for synthetic data. EVALUATION ONLY: NOT DIFFERENTIALLY PRIVATE.

Every function here reads real data in the clear and adds no noise, so nothing it returns is
covered by the privacy guarantee of a PE run. Use it only with a held-out evaluation set that
is disjoint from the private data (``refuse_overlap`` checks exact duplicates); callers must mark
its results as not DP and keep them apart from DP releases (the reference PE library reports
metrics computed on private data next to its DP outputs: we must not).

Metrics:
    - downstream accuracy and macro-F1: a classifier trained on synthetic samples, tested on
      real ones (the "train on synthetic, test on real" protocol of arXiv:2305.15560, Sec. 5).
    - Frechet distance between Gaussian fits of two embedding sets (FID when the embedding is
      Inception-v3 pool3; Heusel et al. 2017, arXiv:1706.08500).
    - improved precision and recall (Kynkäänniemi et al. 2019, arXiv:1904.06991).
    - a memorisation check: each synthetic sample's distance to its closest PRIVATE record
      against its distance to the closest held-out record (the "distance to closest record"
      test of synthetic-data audits). It reads private records: owner's eyes only.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial.distance import cdist
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from pe_core.errors import DataError
from pe_core.nn import create_backend
from pe_core.samples import Samples
from pe_kernels.reference import exact_sq_dist_pairs

# lbfgs iteration budgets tried in turn: most standardised feature sets converge within the
# first; a harder one gets more iterations instead of a silently under-fitted classifier.
_MAX_ITERS = (1_000, 10_000)

# Upper bound on the float64 entries of one block of a distance matrix (64 MiB).
_BLOCK_ENTRIES = 1 << 23


@dataclass(frozen=True)
class Downstream:
    """Scores of a classifier trained on synthetic features and tested on real ones.

    Attributes:
        accuracy: the fraction of test records classified correctly.
        macro_f1: the unweighted mean over the test set's classes of each class's F1 (a class
            never predicted scores 0), so a classifier that predicts the majority class for
            everything scores low even where accuracy does not.
    """

    accuracy: float
    macro_f1: float


def downstream_scores(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    *,
    seed: int = 0,
) -> Downstream:
    """Trains a linear classifier on (synthetic) features and scores it on real ones.

    Features are standardised with statistics of the training set, then a multinomial logistic
    regression (L2, C=1, lbfgs) is fitted on the training rows in a canonical order (sorted by
    label, then features), so the scores do not depend on the order the files were read in
    (lbfgs sums its gradient in row order). When lbfgs does not converge the fit is repeated
    with a larger iteration budget; if the largest budget still fails, the
    ``ConvergenceWarning`` is re-issued rather than hidden. Not thread-safe: it scopes warning
    filters to record convergence warnings.

    Args:
        train_x: (n_train, d) training features, e.g. embeddings of synthetic samples.
        train_y: (n_train,) integer labels.
        test_x: (n_test, d) held-out real features.
        test_y: (n_test,) integer labels.
        seed: random_state passed to the classifier.

    Returns:
        Accuracy and macro-F1 on the test set. With a single class in the training set, those
        of always predicting that class.

    Raises:
        ValueError: on empty sets or mismatched shapes.
    """
    x_train = _as_matrix(train_x, "train_x")
    x_test = _as_matrix(test_x, "test_x")
    y_train = np.asarray(train_y).reshape(-1)
    y_test = np.asarray(test_y).reshape(-1)
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("downstream_scores needs non-empty training and test sets")
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise ValueError("features and labels must have the same number of rows")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"train and test features differ in dimension: {x_train.shape[1]} vs {x_test.shape[1]}"
        )
    classes = np.unique(y_train)
    if len(classes) == 1:
        predicted = np.full(len(y_test), classes[0])
    else:
        order = _canonical_order(x_train, y_train)
        x_train, y_train = x_train[order], y_train[order]
        scaler = StandardScaler().fit(x_train)
        model = _fit_logistic(scaler.transform(x_train), y_train, seed)
        predicted = model.predict(scaler.transform(x_test))
    macro_f1 = f1_score(
        y_test, predicted, labels=np.unique(y_test), average="macro", zero_division=0.0
    )
    return Downstream(float(np.mean(predicted == y_test)), float(macro_f1))


def _canonical_order(x: NDArray[np.floating], labels: NDArray) -> NDArray[np.intp]:
    """Row indices that sort rows by label, then by their bytes: the same rows in any order
    come out in one order (rows equal in both are interchangeable). Sorting the bytes is one
    comparison sort (8 ms for 10,000 rows of 2,048), where a numeric lexsort makes a pass per
    feature (2.2 s)."""
    rows = np.ascontiguousarray(x).view(f"V{x.shape[1] * x.itemsize}").ravel()
    by_bytes = np.argsort(rows, kind="stable")
    return by_bytes[np.argsort(labels[by_bytes], kind="stable")]


def _fit_logistic(x: NDArray[np.float64], y: NDArray, seed: int) -> LogisticRegression:
    for max_iter in _MAX_ITERS:
        model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x, y)
        unconverged = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
        for w in caught:
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if not unconverged:
            return model
    warnings.warn(
        f"logistic regression did not converge within {_MAX_ITERS[-1]} lbfgs iterations; "
        "the downstream accuracy may be underestimated",
        ConvergenceWarning,
        stacklevel=3,
    )
    return model


def frechet_distance(emb_a: ArrayLike, emb_b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two embedding sets (FID's formula).

    d^2 = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})
    (Eq. 6 of arXiv:1706.08500, with tr((S_a S_b)^{1/2}) written through the symmetric PSD matrix
    S_a^{1/2} S_b S_a^{1/2}, which has the same eigenvalues as S_a S_b). Both square roots come
    from symmetric eigen-decompositions with eigenvalues below round-off level set to zero, so
    singular covariances (fewer samples than dimensions) need no diagonal offset and no complex
    ``sqrtm`` output arises. Computed in float64.

    Args:
        emb_a: (n_a, d) embeddings, n_a >= 2.
        emb_b: (n_b, d) embeddings, n_b >= 2.

    Returns:
        The squared Frechet distance (what "FID" reports), >= 0, in squared embedding units.
    """
    a = _as_matrix(emb_a, "emb_a")
    b = _as_matrix(emb_b, "emb_b")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance needs at least 2 embeddings per set")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    mean_gap = a.mean(axis=0) - b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    product = root_a @ cov_b @ root_a
    trace_root = float(
        np.sqrt(_clip_round_off(np.linalg.eigvalsh((product + product.T) / 2))).sum()
    )
    distance = float(mean_gap @ mean_gap) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    # Identical distributions give round-off of either sign; the true value is never negative.
    return max(float(distance), 0.0)


def _psd_sqrt(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(_clip_round_off(values))) @ vectors.T


def _clip_round_off(eigenvalues: NDArray[np.floating]) -> NDArray[np.float64]:
    """Zeroes eigenvalues of a PSD matrix that are indistinguishable from round-off.

    The square root magnifies round-off: an eigenvalue of 1e-16 contributes 1e-8 to a trace.
    The cutoff is numpy's ``matrix_rank`` tolerance (largest eigenvalue x size x machine eps).
    """
    cutoff = eigenvalues.max(initial=0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return np.where(eigenvalues > cutoff, eigenvalues, 0.0)


def precision_recall(
    real_emb: ArrayLike, synth_emb: ArrayLike, *, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall of Kynkäänniemi et al. 2019 (arXiv:1904.06991, Eq. 1-3).

    Each set's manifold is the union of balls centred on its samples, with radius the distance to
    the sample's k-th nearest neighbour within the same set (the sample itself excluded).
    Precision is the fraction of synthetic samples inside the real manifold; recall is the
    fraction of real samples inside the synthetic manifold. Distances are exact Euclidean
    (``scipy.spatial.distance.cdist`` in float64), computed in row blocks of at most 2^23 entries
    so memory stays bounded; the cost is O((n_real + n_synth)^2 d).

    Args:
        real_emb: (n_real, d) embeddings of real samples, n_real > k.
        synth_emb: (n_synth, d) embeddings of synthetic samples, n_synth > k.
        k: neighbourhood size (the paper uses 3).

    Returns:
        (precision, recall), each in [0, 1].
    """
    real = _as_matrix(real_emb, "real_emb")
    synth = _as_matrix(synth_emb, "synth_emb")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(real) <= k or len(synth) <= k:
        raise ValueError(f"precision_recall needs more than k={k} samples in each set")
    if real.shape[1] != synth.shape[1]:
        raise ValueError(f"embedding dimensions differ: {real.shape[1]} vs {synth.shape[1]}")
    real_radii = _knn_radii(real, k)
    synth_radii = _knn_radii(synth, k)
    synth_covered = np.zeros(len(synth), dtype=bool)
    real_covered = np.zeros(len(real), dtype=bool)
    step = _block_rows(len(real))
    for start in range(0, len(synth), step):
        dist = cdist(synth[start : start + step], real)
        synth_covered[start : start + step] = (dist <= real_radii[None, :]).any(axis=1)
        real_covered |= (dist <= synth_radii[start : start + step, None]).any(axis=0)
    return float(synth_covered.mean()), float(real_covered.mean())


def _knn_radii(points: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """Distance from each point to its k-th nearest other point (column 0 is the point itself)."""
    radii = np.empty(len(points))
    step = _block_rows(len(points))
    for start in range(0, len(points), step):
        dist = cdist(points[start : start + step], points)
        radii[start : start + step] = np.partition(dist, k, axis=1)[:, k]
    return radii


def _block_rows(n_columns: int) -> int:
    return max(1, _BLOCK_ENTRIES // max(n_columns, 1))


def record_hashes(samples: Samples) -> set[str]:
    """Returns the hex sha256 of every record's content: raw image bytes, or UTF-8 text.

    Ids and labels are left out, so the same image or text under another id still matches.
    """
    if samples.images is not None:
        return {hashlib.sha256(image.tobytes()).hexdigest() for image in samples.images}
    return {hashlib.sha256(text.encode("utf-8")).hexdigest() for text in samples.texts or ()}


def refuse_overlap(private: Samples, evaluation: Samples) -> None:
    """Raises DataError when any evaluation record's content equals a private record's.

    Evaluation metrics are computed in the clear, so an evaluation set that contains private
    records would publish non-DP information about them. Only exact duplicates are detected;
    the message gives a count and never the records themselves.

    Raises:
        DataError: when the two sets share at least one record.
    """
    shared = record_hashes(private) & record_hashes(evaluation)
    if shared:
        raise DataError(
            f"{len(shared)} evaluation record(s) also appear in the private data; evaluation "
            "must use held-out data that is disjoint from the private dataset"
        )


def evaluate(
    synthetic: Samples,
    evaluation: Samples,
    features: Callable[[Samples], NDArray[np.float32]],
    *,
    k: int = 3,
    seed: int = 0,
    max_manifold: int = 2000,
) -> dict[str, float]:
    """Computes every metric of this module in one feature space. NOT DP: see the module doc.

    Call ``refuse_overlap(private, evaluation)`` first; this function never sees private data.

    Args:
        synthetic: the synthetic samples to assess.
        evaluation: held-out real samples with the same label set, disjoint from the private data.
        features: maps samples to (n, d) float32 features, e.g. an embedder's ``embed``.
        k: neighbourhood size for precision and recall.
        seed: random_state of the downstream classifier and of the subsets below.
        max_manifold: precision and recall cost O((n_real + n_synth)^2 d), so each side is
            cut to a fixed random subset of at most this many records for them (accuracy and
            FID use every record).

    Returns:
        {"accuracy", "macro_f1", "fid", "precision", "recall"}: downstream accuracy and
        macro-F1 of a classifier trained on the synthetic features and tested on the evaluation
        features (:func:`downstream_scores`), and the Frechet distance, precision and recall
        between the two feature sets. The same records in another order give the same scores.
    """
    if synthetic.label_names != evaluation.label_names:
        raise ValueError("synthetic and evaluation samples must share the same label set")
    synth_x, synth_y = _in_canonical_order(features(synthetic), synthetic.labels)
    real_x, real_y = _in_canonical_order(features(evaluation), evaluation.labels)
    rng = np.random.default_rng(seed)
    precision, recall = precision_recall(
        _subset(real_x, max_manifold, rng), _subset(synth_x, max_manifold, rng), k=k
    )
    downstream = downstream_scores(synth_x, synth_y, real_x, real_y, seed=seed)
    return {
        "accuracy": downstream.accuracy,
        "macro_f1": downstream.macro_f1,
        "fid": frechet_distance(real_x, synth_x),
        "precision": precision,
        "recall": recall,
    }


def _in_canonical_order(
    x: NDArray[np.float32], labels: NDArray
) -> tuple[NDArray[np.float32], NDArray]:
    """Features and labels sorted canonically, so that every score (the random subsets of
    precision and recall too) is the same for the same records read in another order."""
    order = _canonical_order(x, labels)
    return x[order], labels[order]


def _subset(x: NDArray[np.float32], most: int, rng: np.random.Generator) -> NDArray[np.float32]:
    if len(x) <= most:
        return x
    return x[np.sort(rng.choice(len(x), size=most, replace=False))]


def _as_matrix(values: ArrayLike, name: str) -> NDArray[np.float64]:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


@dataclass(frozen=True)
class Memorisation:
    """How close the synthetic samples come to the private records. NOT DP, PRIVATE.

    Attributes:
        to_private: (m,) L2 distance of each synthetic sample to its closest private record.
        to_heldout: (m,) L2 distance of each synthetic sample to its closest held-out record.
        closest_private: (m,) index of that closest private record.
        closer_to_private: the share of synthetic samples strictly closer to a private record
            than to any held-out one.
        baseline: what that share would be for samples that saw neither set, n / (n + h) for
            n private and h held-out records from one distribution (the closest of the n + h
            records is then equally likely to be any of them); a share well above it means the
            generator reproduces private records.
    """

    to_private: NDArray[np.float64]
    to_heldout: NDArray[np.float64]
    closest_private: NDArray[np.int64]
    closer_to_private: float
    baseline: float


def memorisation(
    synthetic: NDArray[np.float32], private: NDArray[np.float32], heldout: NDArray[np.float32]
) -> Memorisation:
    """The memorisation check on embeddings of the three sets. NOT DP: it reads private records.

    Args:
        synthetic: (m, d) float32 synthetic embeddings.
        private: (n, d) float32 private embeddings.
        heldout: (h, d) float32 held-out real embeddings, disjoint from the private records.
    """
    backend = create_backend("numpy-blocked")

    def closest(
        points: NDArray[np.float32], among: NDArray[np.float32]
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        index = backend.search(points, among, 1)[:, 0]
        rows = np.arange(len(points), dtype=np.int64)
        return index, np.sqrt(exact_sq_dist_pairs(points, among, rows, index))

    closest_private, to_private = closest(synthetic, private)
    _, to_heldout = closest(synthetic, heldout)
    return Memorisation(
        to_private=to_private,
        to_heldout=to_heldout,
        closest_private=closest_private,
        closer_to_private=float(np.mean(to_private < to_heldout)),
        baseline=len(private) / (len(private) + len(heldout)),
    )
