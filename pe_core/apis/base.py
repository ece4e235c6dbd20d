"""The variation-API protocol and its registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from pe_core.errors import PrivevoError
from pe_core.registry import Registry
from pe_core.samples import DataShape, Modality, Samples


@runtime_checkable
class VariationApi(Protocol):
    """A generator PE can ask for samples (Alg. 1 of arXiv:2305.15560).

    An API is built for one public label set (``label_names``). ``degree`` is a strength in
    [0, 1]: 0 keeps a sample as it is, 1 is the strongest variation the API offers; each API
    maps it to its own scale (parameter jitter, SDEdit strength, share of rewritten text).
    """

    modality: ClassVar[Modality]
    uses_accelerator: ClassVar[bool]
    """True for neural generators (diffusion and language models), whose jobs go to GPU
    workers; False for simulators, which run on CPU workers."""
    default_degree_end: ClassVar[float]
    """The last iteration's degree when the job names none (``degree_end``): the schedule then
    falls linearly from ``degree_start`` to it. 0.2 (vary finely at the end) for all but
    ``strokes``, whose small late variations copy their parents (see its module)."""
    default_threshold_sigmas: ClassVar[float]
    """The vote threshold H, in standard deviations of the noise, when the job names none: 2
    for all but ``strokes`` (1), whose random samples are close enough to the data that
    dropping weakly voted ones cost more than it saved on small data (see its module)."""
    label_names: tuple[str, ...]

    @property
    def public_data(self) -> str:
        """The data the generator was built from (its training data, fonts, grammar): public,
        and outside any run's guarantee; the privacy report quotes it."""
        ...

    def random(self, label: int, n: int, rng: np.random.Generator) -> Samples:
        """Returns n fresh samples of ``label``, with new ids."""
        ...

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        """Returns one variation of each sample (same order and labels, new ids)."""
        ...


@runtime_checkable
class BatchedVariations(Protocol):
    """An API that makes several variations of the same samples in one call, as lookahead asks
    (``pe_core.histogram.lookahead_embeddings``), when that is cheaper than one call each.

    ``variations(samples, degree, rng, count)`` must return exactly what ``count`` calls of
    ``variation(samples, degree, rng)`` would, bit for bit, drawing from ``rng`` in the same
    order: the batch is an optimisation, never a different result.
    """

    def variations(
        self, samples: Samples, degree: float, rng: np.random.Generator, count: int
    ) -> list[Samples]:
        """Returns ``count`` variations of ``samples``, in the order single calls make them."""
        ...


@runtime_checkable
class PerJobState(Protocol):
    """An API that keeps per-job state (e.g. the ``llm`` API's request and token caps).

    A worker keeps APIs, and the models they hold, loaded across jobs; before a job it asks such
    an API for a copy that shares the loaded models and starts its per-job state afresh.
    """

    def for_new_job(self) -> VariationApi:
        """A copy sharing the loaded models, with per-job state reset."""
        ...


def check_variation_input(
    api: str,
    samples: Samples,
    degree: float,
    label_names: tuple[str, ...],
    columns: Sequence[str],
) -> None:
    """The checks every ``variation`` makes before touching its input.

    Raises:
        ValueError: degree outside [0, 1] (or NaN), or samples of another label set.
        PrivevoError: samples lack the parameter ``columns`` the API varies.
    """
    if not 0.0 <= degree <= 1.0:
        raise ValueError(f"degree must lie in [0, 1], got {degree}")
    if samples.label_names != label_names:
        raise ValueError("samples were made for a different label set")
    missing = [c for c in columns if c not in samples.params]
    if missing:
        raise PrivevoError(
            f"samples lack the {api} parameter columns {missing}; variation needs samples "
            f"made by the {api} API"
        )


def square_grayscale_refusals(
    api: str, config: dict[str, Any], data: DataShape, otherwise: str
) -> list[str]:
    """The refusal of a simulator that draws ``image_size`` x ``image_size`` grayscale images
    (28 by default) for a dataset of another shape: the fix is the canvas size when the
    dataset's images are square and grayscale, else ``otherwise``. None for texts or a match."""
    size = config.get("image_size", 28)
    if data.image_shape is None or data.image_shape == (size, size, 1):
        return []
    height, width, channels = data.image_shape
    fix = f"set api_config.image_size: {height}" if height == width and channels == 1 else otherwise
    return [
        f"api: {api} draws {size}x{size} grayscale images but the dataset's are {height}x"
        f"{width} with {channels} channel(s): {fix}"
    ]


API_REGISTRY: Registry[VariationApi] = Registry("variation API")


def register_api(name: str, factory: Callable[..., VariationApi]) -> None:
    API_REGISTRY.register(name, factory)


def create_api(name: str, **config: Any) -> VariationApi:
    """Builds a registered API; ``config`` must include ``label_names``."""
    return API_REGISTRY.create(name, **config)
