"""Selection of the next population from a noisy vote histogram (steps 4-6 of PE's loop).

Everything here post-processes a DP release (the noisy counts), so it costs no privacy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from pe_core.samples import Samples


def allocate(total: int, fractions: NDArray[np.float64]) -> NDArray[np.int64]:
    """Splits ``total`` by ``fractions`` with largest-remainder rounding (sums to ``total``)."""
    share = total * fractions / fractions.sum()
    counts = np.floor(share).astype(np.int64)
    order = np.lexsort((np.arange(len(share)), -(share - counts)))
    counts[order[: total - int(counts.sum())]] += 1
    return counts


@dataclass(frozen=True)
class Selection:
    """Indices chosen from one label's population, and whether the fallback was used.

    Attributes:
        indices: (n_select,) int64 indices into the label's population (repeats possible).
        fallback: True when every thresholded count was zero, so the choice ignored the votes.
    """

    indices: NDArray[np.int64]
    fallback: bool


def threshold_counts(noisy: NDArray[np.int64], threshold: float) -> NDArray[np.float64]:
    """max(noisy - H, 0) per bin (Sec. 4 of arXiv:2305.15560)."""
    return np.maximum(noisy.astype(np.float64) - threshold, 0.0)


SelectionMethod = Literal["sample", "systematic", "rank"]


def select(
    scores: NDArray[np.float64],
    n_select: int,
    how: SelectionMethod,
    rng: np.random.Generator,
) -> Selection:
    """Chooses ``n_select`` indices from thresholded counts.

    ``sample`` draws with replacement with probability proportional to the scores (PE for
    images). ``systematic`` gives each index the same expected number of copies,
    ``n_select * p_i``, but with the least spread: every index gets ``floor`` or ``ceil`` of it
    (systematic resampling, one uniform offset for ``n_select`` evenly spaced points on the
    cumulative scores), so no well-voted sample is lost to the luck of the draw and fewer copies
    pile onto one parent; the order is shuffled. ``rank`` keeps the top scores, ties to the
    lowest index (Aug-PE for text). When every score is zero the votes carry no signal:
    ``sample`` and ``systematic`` then choose uniformly and ``rank`` keeps the first indices, and
    ``fallback`` says so. No fresh noise is ever drawn.
    """
    m = len(scores)
    if m == 0 or n_select == 0:
        return Selection(np.zeros(0, dtype=np.int64), fallback=False)
    total = scores.sum()
    fallback = not total > 0
    if how == "rank":
        order = np.lexsort((np.arange(m), -scores))
        reps = math.ceil(n_select / m)
        return Selection(np.tile(order, reps)[:n_select].astype(np.int64), fallback)
    if how == "systematic":
        uniform = np.full(m, 1.0 / m)
        return Selection(
            _systematic(uniform if fallback else scores / total, n_select, rng), fallback
        )
    p = None if fallback else scores / total
    return Selection(rng.choice(m, size=n_select, replace=True, p=p).astype(np.int64), fallback)


def _systematic(p: NDArray[np.float64], n: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Systematic resampling: the points (u + j) / n, j = 0..n-1, for one u ~ U[0, 1), located
    on the cumulative probabilities. Index i takes the points in its interval, whose length is
    p_i, so it gets floor(n p_i) or ceil(n p_i) copies, n p_i in expectation."""
    edges = np.cumsum(p)
    edges[-1] = 1.0  # rounding must not leave the last points past the end
    points = (rng.random() + np.arange(n)) / n
    chosen = np.searchsorted(edges, points, side="right").astype(np.int64)
    return rng.permutation(chosen)


class Varies(Protocol):
    """What makes variations: a variation API, or the engine's ``pe_core.generation``."""

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        """One variation of each sample, in order."""
        ...


def next_population(
    api: Varies,
    selected: Samples,
    n_target: int,
    *,
    folds: int,
    keep_selected: bool,
    degree: float,
    rng: np.random.Generator,
) -> Samples:
    """Builds the next population: ``folds`` variations of each selected sample, plus the
    selected samples themselves with ``keep_selected`` (as Aug-PE does), cut to ``n_target``."""
    parts = [_distinct_ids(selected)] if keep_selected else []
    parts += [api.variation(selected, degree, rng) for _ in range(folds)]
    merged = Samples.concat(parts)
    return merged.take(np.arange(min(n_target, len(merged))))


def _distinct_ids(samples: Samples) -> Samples:
    """Renames repeats of an id (sampling with replacement) so output file names stay unique."""
    seen: dict[str, int] = {}
    ids = []
    for sid in samples.ids.tolist():
        seen[sid] = seen.get(sid, -1) + 1
        ids.append(sid if seen[sid] == 0 else f"{sid}-r{seen[sid]}")
    return samples.with_ids(np.array(ids, dtype=np.str_))


def selection_size(n_target: int, *, folds: int, keep_selected: bool) -> int:
    """How many samples to select so that the next population has ``n_target`` samples."""
    return math.ceil(n_target / (folds + int(keep_selected)))
