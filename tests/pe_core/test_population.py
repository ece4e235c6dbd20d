import numpy as np
import pytest

from pe_core.apis import create_api
from pe_core.population import (
    next_population,
    select,
    selection_size,
    threshold_counts,
)


def test_threshold_subtracts_and_clips():
    noisy = np.array([-3, 0, 1, 5, 10], dtype=np.int64)
    np.testing.assert_array_equal(threshold_counts(noisy, 2.0), [0, 0, 0, 3, 8])


def test_rank_keeps_top_scores_ties_to_lowest_index():
    scores = np.array([1.0, 5.0, 3.0, 5.0, 0.0])
    chosen = select(scores, 3, "rank", np.random.default_rng(0))
    np.testing.assert_array_equal(chosen.indices, [1, 3, 2])
    assert not chosen.fallback


def test_rank_repeats_when_asked_for_more_than_exist():
    chosen = select(np.array([2.0, 1.0]), 5, "rank", np.random.default_rng(0))
    np.testing.assert_array_equal(chosen.indices, [0, 1, 0, 1, 0])


def test_sample_is_proportional_to_scores():
    scores = np.array([0.0, 1.0, 3.0])
    chosen = select(scores, 40_000, "sample", np.random.default_rng(1))
    freq = np.bincount(chosen.indices, minlength=3) / 40_000
    assert freq[0] == 0
    assert abs(freq[2] - 0.75) < 0.01


def test_all_zero_scores_fall_back_without_crashing():
    rng = np.random.default_rng(2)
    sampled = select(np.zeros(4), 1000, "sample", rng)
    assert sampled.fallback
    assert set(np.unique(sampled.indices)) == {0, 1, 2, 3}
    ranked = select(np.zeros(4), 2, "rank", rng)
    assert ranked.fallback
    np.testing.assert_array_equal(ranked.indices, [0, 1])


def test_empty_partition_selects_nothing():
    assert len(select(np.zeros(0), 3, "sample", np.random.default_rng(0)).indices) == 0


@pytest.mark.parametrize(
    ("folds", "keep", "expected"), [(1, False, 10), (3, False, 4), (1, True, 5)]
)
def test_selection_size(folds, keep, expected):
    assert selection_size(10, folds=folds, keep_selected=keep) == expected


def test_next_population_sizes_labels_and_unique_ids():
    api = create_api("drawtext", label_names=("0", "1"))
    rng = np.random.default_rng(3)
    base = api.random(1, 4, rng)
    selected = base.take([0, 0, 1, 2])
    out = next_population(api, selected, 7, folds=1, keep_selected=True, degree=0.5, rng=rng)
    assert len(out) == 7
    assert set(out.labels.tolist()) == {1}
    assert len(set(out.ids.tolist())) == 7


def test_systematic_gives_every_index_the_floor_or_ceil_of_its_share():
    rng = np.random.default_rng(5)
    for _ in range(200):
        m, n = int(rng.integers(1, 40)), int(rng.integers(1, 300))
        scores = rng.exponential(size=m) * (rng.random(m) < 0.7)
        chosen = select(scores, n, "systematic", rng)
        share = np.full(m, n / m) if chosen.fallback else n * scores / scores.sum()
        copies = np.bincount(chosen.indices, minlength=m)
        assert len(chosen.indices) == n
        assert np.all(copies >= np.floor(share - 1e-9)) and np.all(copies <= np.ceil(share + 1e-9))
        assert np.all(copies[scores == 0] == 0) or chosen.fallback


def test_systematic_is_unbiased_and_keeps_more_distinct_parents_than_sample():
    rng = np.random.default_rng(6)
    scores = rng.exponential(size=50)
    expected = 20 * scores / scores.sum()
    totals = np.zeros(50)
    distinct = {"sample": [], "systematic": []}
    for _ in range(4000):
        chosen = select(scores, 20, "systematic", rng)
        totals += np.bincount(chosen.indices, minlength=50)
        distinct["systematic"].append(len(np.unique(chosen.indices)))
        distinct["sample"].append(len(np.unique(select(scores, 20, "sample", rng).indices)))
    # Each index's mean copies against n p_i: 4,000 draws of a count within [floor, ceil] have a
    # standard error below 0.5 / sqrt(4000) = 0.008; 0.04 is five of them.
    np.testing.assert_allclose(totals / 4000, expected, atol=0.04)
    assert np.mean(distinct["systematic"]) > np.mean(distinct["sample"]) + 1
