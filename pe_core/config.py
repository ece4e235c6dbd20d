"""The one pydantic model that describes a PE job.

The CLI's YAML config and flags, and the service's REST job body, are views of ``PeJob``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from pe_core.registry import did_you_mean

DEFAULT_DELTA = 1e-6
"""Fixed default delta. Never derived from the private record count: under add/remove
neighbours that count is itself private."""


class PeJob(BaseModel):
    """Parameters of one Private Evolution run (Alg. 1 of arXiv:2305.15560).

    Attributes are documented in the README's configuration reference.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    api: str = Field("drawtext", description="Variation API: drawtext | grammar | ...")
    api_config: dict[str, Any] = Field(default_factory=dict, description="API parameters")
    embedding: str = Field("raw-pixels", description="Embedder: raw-pixels | inception | minilm")
    embedding_config: dict[str, Any] = Field(default_factory=dict)
    metric: Literal["l2", "cosine"] = "l2"
    epsilon: float = Field(1.0, gt=0, description="Target epsilon (inf only with no_privacy)")
    delta: float = Field(DEFAULT_DELTA, gt=0, lt=1)
    no_privacy: bool = Field(False, description="Baseline without noise: NOT PRIVATE")
    insecure_test_noise: bool = Field(
        False, description="Seeded noise for tests and reproducible experiments: NOT PRIVATE"
    )
    iterations: int = Field(4, ge=1, le=1000, description="T, the number of noisy releases")
    num_samples: int = Field(2000, ge=1, le=10_000_000, description="Synthetic samples in all")
    candidates: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Samples voted on per iteration, in all; None: num_samples",
    )
    lookahead: int = Field(0, ge=0, le=64, description="Variations averaged per embedding")
    threshold: float | None = Field(
        None,
        ge=0,
        description="H in votes; None: the API's multiple of sigma, 2 (1 for strokes); 0 "
        "without noise",
    )
    k: int = Field(1, ge=1, le=64, description="Nearest neighbours each record votes for")
    privacy_unit: Literal["record", "user"] = Field(
        "record", description="What the guarantee protects: one record, or one user's records"
    )
    votes_per_user: int = Field(
        1, ge=1, le=64, description="c: distinct samples one user votes for per iteration (user)"
    )
    labels_per_user: int = Field(
        1, ge=1, le=64, description="c_L: labels one user is counted in by DP label counts (user)"
    )
    selection: Literal["sample", "systematic", "rank"] = "sample"
    keep_selected: bool = False
    folds: int = Field(1, ge=1, le=64, description="Variations made of each selected sample")
    vary_last: bool = Field(
        True,
        description="False: the last iteration outputs its best-voted num_samples candidates "
        "instead of their variations (needs candidates > num_samples)",
    )
    degrees: list[float] | None = Field(
        None, description="Variation degree per iteration, each in [0, 1]"
    )
    degree_start: float = Field(1.0, ge=0, le=1)
    degree_end: float | None = Field(
        None,
        ge=0,
        le=1,
        description="The last iteration's degree; default: the API's (1.0 for strokes, else 0.2)",
    )
    labels: list[str] | None = Field(None, description="The public label set (declared)")
    label_fractions: dict[str, float] | Literal["uniform", "dp"] = Field(
        "uniform", description="Public class proportions, 'uniform', or 'dp' (estimated, charged)"
    )
    nn_backend: str = "auto"
    seed: int | None = Field(None, ge=0, description="Seed for generation and selection")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # Said here, with the nearest valid key, rather than as pydantic's bare "extra inputs
        # are not permitted" (subclasses add their own fields: the CLI's data, the service's
        # dataset_id).
        if isinstance(data, dict):
            unknown = [key for key in data if key not in cls.model_fields]
            if unknown:
                raise ValueError(
                    "; ".join(
                        f"unknown key {key!r}{did_you_mean(str(key), cls.model_fields)}"
                        for key in unknown
                    )
                    + "; the README's configuration reference lists every key"
                )
        return data

    @field_validator("epsilon", mode="before")
    @classmethod
    def _null_epsilon_is_infinite(cls, value: Any) -> Any:
        # JSON has no infinity: an infinite epsilon (no privacy) is written as null.
        return math.inf if value is None else value

    @field_serializer("epsilon", when_used="json")
    def _infinite_epsilon_is_null(self, value: float) -> float | None:
        return None if math.isinf(value) else value

    @field_validator("degrees")
    @classmethod
    def _degrees_in_range(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not 0 <= d <= 1 for d in value):
            raise ValueError("every degree must lie in [0, 1]")
        return value

    @field_validator("label_fractions")
    @classmethod
    def _fractions_valid(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if not value or any(not math.isfinite(f) or f < 0 for f in value.values()):
                raise ValueError("label fractions must be finite and non-negative")
            if sum(value.values()) <= 0:
                raise ValueError("label fractions must not all be zero")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PeJob:
        if math.isinf(self.epsilon) and not self.no_privacy:
            raise ValueError("epsilon = inf means no privacy: pass no_privacy (--no-privacy)")
        if self.degrees is not None and len(self.degrees) != self.iterations:
            raise ValueError(
                f"degrees has {len(self.degrees)} entries but iterations is {self.iterations}"
            )
        if not self.vary_last and self.voted_samples <= self.num_samples:
            raise ValueError(
                "vary_last false outputs the best-voted num_samples of the last iteration's "
                f"candidates, so candidates ({self.voted_samples}) must exceed num_samples "
                f"({self.num_samples}); set candidates, e.g. to {2 * self.num_samples}"
            )
        if self.no_privacy and self.label_fractions == "dp":
            raise ValueError("label_fractions 'dp' needs noise; give fractions or 'uniform'")
        return self

    @property
    def voted_samples(self) -> int:
        """Size of each population that is voted on: ``candidates``, or ``num_samples``. The
        last iteration's variations make the ``num_samples`` output from the last vote (or,
        without ``vary_last``, its best-voted candidates do)."""
        return self.num_samples if self.candidates is None else self.candidates

    @property
    def releases_per_iteration(self) -> int:
        """Sensitivity-1 releases one vote histogram is charged as: one record changes k
        distinct counts by 1, one user c (see ``pe_core.histogram``)."""
        return self.votes_per_user if self.privacy_unit == "user" else self.k

    @property
    def label_count_releases(self) -> int:
        """Sensitivity-1 releases DP label counts are charged as: one record is in one label,
        one user is counted in at most c_L labels (see ``pe_core.histogram``)."""
        return self.labels_per_user if self.privacy_unit == "user" else 1

    @property
    def total_releases(self) -> int:
        """Sensitivity-1 discrete Gaussian releases the plan makes: T vote histograms, plus the
        label counts when the fractions are ``dp``."""
        labels = self.label_count_releases if self.label_fractions == "dp" else 0
        return self.releases_per_iteration * self.iterations + labels

    def degree_schedule(self, api_degree_end: float) -> list[float]:
        """Degree of iteration t = 1..T: given, or linear from degree_start to degree_end (the
        API's ``api_degree_end`` when the job names none)."""
        if self.degrees is not None:
            return list(self.degrees)
        if self.iterations == 1:
            return [self.degree_start]
        end = api_degree_end if self.degree_end is None else self.degree_end
        step = (end - self.degree_start) / (self.iterations - 1)
        return [round(self.degree_start + step * t, 9) for t in range(self.iterations)]
