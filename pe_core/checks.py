"""Checks of a job against its data's public shape, made before any budget or state is spent.

The gateway makes them before it reserves a job's budget (answering 422), the CLI before it
writes anything, and a worker again before it runs. They read only public inputs: the job, the
operator's :class:`~pe_core.policy.PrivacyPolicy`, the registered plug-ins, and the dataset's
schema (:class:`DataShape`: its modality, its public label set, its image size). No statistic
of the private records enters, so a refusal reveals nothing about them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pe_core.apis import API_REGISTRY
from pe_core.config import PeJob
from pe_core.embedders import EMBEDDER_REGISTRY
from pe_core.errors import PrivevoError
from pe_core.nn import backend_names
from pe_core.policy import PrivacyPolicy
from pe_core.population import allocate
from pe_core.registry import PluginConfigError, UnknownNameError, did_you_mean
from pe_core.samples import DataShape, Modality


@runtime_checkable
class ChecksData(Protocol):
    """A plug-in class that can say, from its parameters alone, what data it cannot serve."""

    @classmethod
    def refusals(cls, config: dict[str, Any], data: DataShape) -> list[str]:
        """Problems with ``data`` for these parameters, each saying how to fix it."""
        ...


class JobRefused(PrivevoError, ValueError):
    """A job that cannot run on its data; the message lists every problem and its fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def check_job(job: PeJob, data: DataShape, *, policy: PrivacyPolicy) -> None:
    """Refuses a job that would fail on its data or that the policy does not allow, before
    anything is reserved or written.

    Raises:
        JobRefused: what the policy refuses, unknown plug-in names or parameters, a modality
            mismatch, images the generator cannot make, labels it cannot draw, or labels left
            without samples.
    """
    problems = policy.refusals(job)
    api = _plugin(API_REGISTRY, "api", job.api, job.api_config, problems, given={"label_names"})
    embedder = _plugin(
        EMBEDDER_REGISTRY, "embedding", job.embedding, job.embedding_config, problems
    )
    backends = backend_names()
    if job.nn_backend not in backends:
        problems.append(
            f"nn_backend: unknown {job.nn_backend!r}{did_you_mean(job.nn_backend, backends)}; "
            f"valid names: {', '.join(backends)}"
        )
    for role, plugin, name in (("api", api, job.api), ("embedding", embedder, job.embedding)):
        modality = getattr(plugin, "modality", None)
        if modality is not None and modality != data.modality:
            problems.append(
                f"{role}: {name!r} works on {modality}s but the dataset holds {data.modality}s; "
                f"choose {_modality_hint(role, data.modality)}"
            )
    if isinstance(api, ChecksData) and getattr(api, "modality", None) == data.modality:
        problems += api.refusals(dict(job.api_config), data)
    problems += _label_problems(job, data.labels)
    problems += _unit_problems(job, data)
    if problems:
        raise JobRefused(problems)


def _plugin(
    registry: Any,
    role: str,
    name: str,
    config: dict[str, Any],
    problems: list[str],
    *,
    given: set[str] | frozenset[str] = frozenset(),
) -> Any:
    try:
        factory = registry.factory(name)
        registry.check_config(name, config, given=given)
    except UnknownNameError as exc:
        problems.append(f"{role}: {exc}")
        return None
    except PluginConfigError as exc:
        problems.append(f"{role}_config: {exc}")
    return factory


def _modality_hint(role: str, modality: Modality) -> str:
    names = {
        ("api", "image"): "drawtext, strokes or diffusion",
        ("api", "text"): "grammar or llm",
        ("embedding", "image"): "raw-pixels or inception",
        ("embedding", "text"): "minilm",
    }
    return f"an {role} for {modality}s ({names[(role, modality)]})"


def check_label_fractions(job: PeJob, label_names: tuple[str, ...]) -> None:
    """Public fractions must name every label of the (public) label set exactly once."""
    if not isinstance(job.label_fractions, dict):
        return
    unknown = sorted(set(job.label_fractions) - set(label_names))
    missing = sorted(set(label_names) - set(job.label_fractions))
    if unknown or missing:
        raise PrivevoError(
            f"label_fractions must name every label exactly: unknown {unknown}, "
            f"missing {missing}; labels are {list(label_names)}"
        )


def _unit_problems(job: PeJob, data: DataShape) -> list[str]:
    if job.privacy_unit == "user" and not data.has_users:
        return [
            "privacy_unit: 'user' needs the records' users; name the column that holds them "
            "(--user-column, or user_column at upload)"
        ]
    if job.privacy_unit == "record" and data.has_users:
        return [
            "privacy_unit: the records name their users, so the unit of privacy is one user; "
            "set privacy_unit: user (or leave the user column out to protect single records)"
        ]
    return []


def _label_problems(job: PeJob, labels: tuple[str, ...]) -> list[str]:
    if not labels:
        return ["labels: the job has no labels; declare them with labels or label the records"]
    fractions = job.label_fractions
    if isinstance(fractions, dict):
        try:
            check_label_fractions(job, labels)
        except PrivevoError as exc:
            return [str(exc)]
        weights = np.array([fractions[label] for label in labels], dtype=np.float64)
        unshared = [label for label, weight in zip(labels, weights, strict=True) if weight == 0]
        if unshared:
            return [
                f"label_fractions give label(s) {unshared} no share, but every label needs "
                "samples: give each a share above 0, or leave it out of the job's labels"
            ]
    else:
        # "uniform", and "dp" as far as public inputs tell: its split is drawn at run time.
        weights = np.ones(len(labels))
    counts = allocate(job.num_samples, weights).tolist()
    empty = [label for label, n in zip(labels, counts, strict=True) if n == 0]
    if empty:
        return [
            f"num_samples: {job.num_samples} samples leave label(s) {empty} without any; every "
            f"label needs at least one: raise num_samples to at least {len(labels)}"
            + (" or raise their label_fractions" if isinstance(fractions, dict) else "")
        ]
    return []
