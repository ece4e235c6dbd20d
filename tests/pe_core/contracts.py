"""Contract tests that every plug-in of a kind must pass, as mixins for ``Test*`` classes.

Usage::

    class TestMyApiContract(VariationApiContract):
        @classmethod
        def make_api(cls) -> VariationApi:
            return MyApi(label_names=["a", "b"])
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from numpy.typing import NDArray

from pe_core.apis.base import VariationApi
from pe_core.samples import Samples


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between the word sequences of two texts."""
    x, y = a.split(), b.split()
    previous = list(range(len(y) + 1))
    for i, word in enumerate(x, start=1):
        current = [i]
        for j, other in enumerate(y, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1]


def sample_distances(a: Samples, b: Samples) -> NDArray[np.float64]:
    """Per-sample distance between two aligned batches.

    Images: root-mean-square pixel difference in grey levels. Texts: word edit distance divided
    by the longer text's word count (0 = same words, 1 = nothing shared in place).
    """
    if a.images is not None and b.images is not None:
        diff = a.images.astype(np.float64) - b.images.astype(np.float64)
        return np.sqrt((diff**2).reshape(len(a), -1).mean(axis=1))
    assert a.texts is not None and b.texts is not None
    return np.array(
        [
            word_edit_distance(s, t) / max(len(s.split()), len(t.split()), 1)
            for s, t in zip(a.texts, b.texts, strict=True)
        ]
    )


def content(samples: Samples) -> NDArray | tuple[str, ...]:
    """The images or texts of a batch."""
    if samples.images is not None:
        return samples.images
    assert samples.texts is not None
    return samples.texts


def assert_same_content(a: Samples, b: Samples) -> None:
    if a.images is not None:
        np.testing.assert_array_equal(a.images, b.images)
    else:
        assert a.texts == b.texts


class VariationApiContract:
    """Checks the :class:`~pe_core.apis.base.VariationApi` protocol on one API instance.

    Subclasses implement the classmethod :meth:`make_api` (called once per class) and may tune
    the class attributes: ``n`` samples per call, ``low_degree``/``high_degree`` for the
    monotonicity check over ``n_distance`` samples, and ``distance`` for a modality-specific
    notion of how far a variation moved.
    """

    n: ClassVar[int] = 12
    n_distance: ClassVar[int] = 64
    low_degree: ClassVar[float] = 0.1
    high_degree: ClassVar[float] = 1.0

    @classmethod
    def make_api(cls) -> VariationApi:
        raise NotImplementedError

    def distance(self, a: Samples, b: Samples) -> NDArray[np.float64]:
        return sample_distances(a, b)

    @pytest.fixture(scope="class")
    @classmethod
    def api(cls) -> VariationApi:
        return cls.make_api()

    def population(self, api: VariationApi, n: int, seed: int) -> Samples:
        """n samples mixing the first and last label, interleaved."""
        rng = np.random.default_rng(seed)
        last = len(api.label_names) - 1
        mixed = Samples.concat([api.random(0, n - n // 2, rng), api.random(last, n // 2, rng)])
        return mixed.take(rng.permutation(n))

    def test_satisfies_protocol(self, api: VariationApi) -> None:
        assert isinstance(api, VariationApi)
        assert api.modality in ("image", "text")
        assert len(api.label_names) >= 1

    @pytest.mark.parametrize("which", ["first", "last"])
    def test_random_gives_n_samples_of_the_label(self, api: VariationApi, which: str) -> None:
        label = 0 if which == "first" else len(api.label_names) - 1
        samples = api.random(label, self.n, np.random.default_rng(0))
        assert len(samples) == self.n
        assert samples.modality == api.modality
        assert samples.label_names == tuple(api.label_names)
        np.testing.assert_array_equal(samples.labels, np.full(self.n, label))
        assert len(set(samples.ids.tolist())) == self.n

    def test_zero_samples(self, api: VariationApi) -> None:
        empty = api.random(0, 0, np.random.default_rng(0))
        assert len(empty) == 0
        assert empty.modality == api.modality
        assert len(api.variation(empty, 0.5, np.random.default_rng(1))) == 0

    def test_variation_keeps_count_labels_and_order_with_new_ids(self, api: VariationApi) -> None:
        population = self.population(api, self.n, seed=1)
        varied = api.variation(population, 0.5, np.random.default_rng(2))
        assert len(varied) == len(population)
        assert varied.modality == api.modality
        assert varied.label_names == population.label_names
        np.testing.assert_array_equal(varied.labels, population.labels)
        assert len(set(varied.ids.tolist())) == len(varied)
        assert not set(varied.ids.tolist()) & set(population.ids.tolist())

    def test_same_seed_same_output(self, api: VariationApi) -> None:
        first = api.random(0, self.n, np.random.default_rng(3))
        again = api.random(0, self.n, np.random.default_rng(3))
        np.testing.assert_array_equal(first.ids, again.ids)
        assert_same_content(first, again)
        varied = api.variation(first, 0.5, np.random.default_rng(4))
        varied_again = api.variation(first, 0.5, np.random.default_rng(4))
        np.testing.assert_array_equal(varied.ids, varied_again.ids)
        assert_same_content(varied, varied_again)
        assert set(varied.params) == set(varied_again.params)
        for key in varied.params:
            np.testing.assert_array_equal(varied.params[key], varied_again.params[key])

    def test_different_seeds_differ(self, api: VariationApi) -> None:
        one = api.random(0, self.n, np.random.default_rng(5))
        two = api.random(0, self.n, np.random.default_rng(6))
        assert self.distance(one, two).mean() > 0

    def test_degree_zero_keeps_content(self, api: VariationApi) -> None:
        population = self.population(api, self.n, seed=7)
        varied = api.variation(population, 0.0, np.random.default_rng(8))
        assert_same_content(population, varied)
        assert not set(varied.ids.tolist()) & set(population.ids.tolist())

    def test_larger_degree_moves_further(self, api: VariationApi) -> None:
        population = self.population(api, self.n_distance, seed=9)
        near = self.distance(
            population, api.variation(population, self.low_degree, np.random.default_rng(10))
        )
        far = self.distance(
            population, api.variation(population, self.high_degree, np.random.default_rng(11))
        )
        # A paired difference more than 3 standard errors above zero: not a seed accident.
        diff = far - near
        stderr = diff.std(ddof=1) / np.sqrt(len(diff))
        assert diff.mean() > 3 * stderr, (near.mean(), far.mean(), stderr)

    @pytest.mark.parametrize("degree", [-0.1, 1.5, float("nan")])
    def test_degree_outside_unit_interval_is_rejected(
        self, api: VariationApi, degree: float
    ) -> None:
        population = api.random(0, 2, np.random.default_rng(12))
        with pytest.raises(ValueError, match="degree"):
            api.variation(population, degree, np.random.default_rng(13))
