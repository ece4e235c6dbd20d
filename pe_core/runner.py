"""The Private Evolution loop with per-iteration checkpoints and a privacy ledger.

Alg. 1 of arXiv:2305.15560, per label partition: embed the population (optionally with
lookahead), let private records vote for their nearest samples, release the vote counts with
discrete Gaussian noise (ledger entry first), select by the noisy counts, and make variations.
T is the number of noisy histogram releases. A resumed run restarts after its last checkpoint;
an iteration whose release is already in the ledger reuses that release, never drawing fresh
noise. Each checkpoint also lists every release its population was built from (key, event and
digest): a resumed run refuses to go on unless the ledger holds each of them unchanged, so a
deleted or edited ledger can neither hide a release from the report nor let one be drawn again.
Per-iteration randomness comes from ``np.random.default_rng([seed, t])`` so a resumed
run repeats the choices an uninterrupted one would make.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from pe_core.apis.base import VariationApi
from pe_core.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from pe_core.checks import check_label_fractions
from pe_core.config import PeJob
from pe_core.embedders.base import CachedEmbedder, Embedder
from pe_core.errors import PrivevoError
from pe_core.fileio import private_directory
from pe_core.generation import Direct, Generation
from pe_core.histogram import prepare_embeddings, user_label_counts
from pe_core.nn import AUTO, ResolvedBackend, resolve_backend
from pe_core.population import (
    SelectionMethod,
    allocate,
    next_population,
    select,
    selection_size,
    threshold_counts,
)
from pe_core.privacy import (
    Calibration,
    DiscreteGaussianSampler,
    DpEvent,
    InsecureSeededSampler,
    JsonlLedger,
    Ledger,
    LedgerEntry,
    NoiseSampler,
    ReleaseStore,
    calibrate_sigma,
    entry_from_record,
    entry_to_record,
    epsilon_for,
    same_release,
)
from pe_core.samples import Samples
from pe_core.votes import LocalVotes, VoteCounter, VoteCounterFactory, prepare_private, user_codes

NoiseFactory = Callable[[str], NoiseSampler]
"""Maps a release key (e.g. ``iteration-3/histogram``) to the sampler that draws it."""

LABEL_COUNTS_KEY = "label-counts"
CHECKPOINTS = "checkpoints"
LEDGER = "ledger.jsonl"
"""Where a run keeps its checkpoints and (without another ledger) its releases in its state."""


def noise_factory(job: PeJob, seed: int) -> tuple[NoiseFactory, NoiseSampler | None]:
    """The samplers a job draws with, and the one its report names (None without noise).

    Production: one OS-entropy discrete Gaussian sampler for every release. With
    ``insecure_test_noise`` (NOT PRIVATE): a seeded sampler per release key, so a resumed run
    draws what an uninterrupted one would.
    """
    if job.insecure_test_noise and not job.no_privacy:

        def seeded(key: str) -> NoiseSampler:
            digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
            return InsecureSeededSampler(int.from_bytes(digest[:8], "big"))

        return seeded, seeded("report")
    sampler = DiscreteGaussianSampler()
    return (lambda key: sampler), (None if job.no_privacy else sampler)


def histogram_key(iteration: int) -> str:
    return f"iteration-{iteration}/histogram"


@dataclass(frozen=True)
class IterationReport:
    """What a callback sees after an iteration: only DP outputs and DP diagnostics.

    Attributes:
        iteration: t (0 is the initial population, before any release).
        population: the synthetic population after iteration t.
        degree: the variation degree used at t (None for t = 0).
        diagnostics: DP diagnostics computed from the noisy counts only.
        epsilon_spent: epsilon of the releases made so far (at the job's delta).
    """

    iteration: int
    population: Samples
    degree: float | None
    diagnostics: Mapping[str, Any]
    epsilon_spent: float


class RunCallbacks(Protocol):
    def on_phase(self, iteration: int, phase: str) -> None: ...

    def on_iteration(self, report: IterationReport) -> None: ...


class _NoCallbacks:
    def on_phase(self, iteration: int, phase: str) -> None:
        pass

    def on_iteration(self, report: IterationReport) -> None:
        pass


@dataclass(frozen=True)
class RunResult:
    """The outcome of a run: the final population and what the privacy report needs."""

    population: Samples
    sigma: float
    calibration: Calibration | None
    threshold: float
    ledger: list[LedgerEntry]
    label_targets: dict[str, int]
    label_fraction_source: str
    nn_backend: str | None
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    pinned_counts: NDArray[np.int64] | None = None
    """(iterations, len(pinned)) noisy counts of the pinned candidates' bins (an audit's, see
    ``PrivateEvolution``); None without pinned candidates."""


def check_modalities(api: VariationApi, embedder: Embedder, private: Samples) -> None:
    """The API, the embedder and the private data must all be images or all be texts."""
    found = {"data": private.modality, "api": api.modality, "embedding": embedder.modality}
    if len(set(found.values())) > 1:
        described = ", ".join(f"{what} {modality}" for what, modality in found.items())
        raise PrivevoError(
            f"the data, the variation API and the embedder must share one modality; got "
            f"{described} (images: drawtext with raw-pixels or inception; texts: grammar with "
            "minilm)"
        )


class PrivateEvolution:
    """Runs PE for one job.

    Args:
        job: the job's parameters.
        api: the variation API (built for the job's public label set).
        embedder: maps samples to vectors; wrapped in a cache keyed by sample id.
        noise: the sampler per release key; production passes OS-entropy discrete Gaussian.
        state_dir: private working directory for checkpoints, ledger and releases.
        seed: seed of generation and selection randomness (not of the noise).
        ledger: where releases are recorded before use; default a JSON-lines file in
            ``state_dir`` (the service passes its database ledger).
        pinned: public candidates that join every iteration's vote beside the population
            (``pe_core.audit``'s white-box canaries): embedded as themselves (no lookahead),
            never selected nor varied; their bins' noisy counts come back in
            ``RunResult.pinned_counts``. They are part of the one released vote vector, so the
            sensitivity argument of ``pe_core.histogram`` holds as it is: like the population,
            they are fixed before the votes and the same whichever records the private data
            holds (an audit pins every canary, included or not), and each record still adds one
            vote to each of at most k distinct bins. None: the plain run.
        votes: builds the counter of the clean votes from the private records
            (``pe_core.votes``); None: :class:`~pe_core.votes.LocalVotes`, in this process.
        generation: how ``api`` is asked for samples and lookahead embeddings
            (``pe_core.generation``); None: :class:`~pe_core.generation.Direct`, in this
            process.

    Callbacks may raise to stop the run between phases (cancellation): the state stays
    resumable and every recorded release stays recorded.
    """

    def __init__(
        self,
        job: PeJob,
        *,
        api: VariationApi,
        embedder: Embedder,
        noise: NoiseFactory,
        state_dir: Path,
        seed: int,
        ledger: Ledger | None = None,
        pinned: Samples | None = None,
        votes: VoteCounterFactory | None = None,
        generation: Generation | None = None,
    ) -> None:
        self.job = job
        self.api = api
        self.generation = Direct(api) if generation is None else generation
        self.embedder = CachedEmbedder(embedder)
        # A named backend is built now, so a wrong name or device fails before any generation;
        # "auto" waits for the sizes (the first vote).
        self.backend: ResolvedBackend | None = (
            None if job.nn_backend == AUTO else resolve_backend(job.nn_backend, 0, 0, 0)
        )
        self.noise = noise
        self.seed = seed
        # Private state: owner-only folders (0700) of owner-only files (0600).
        private_directory(state_dir)
        self.checkpoints = CheckpointStore(private_directory(state_dir / CHECKPOINTS))
        self.ledger = ledger if ledger is not None else JsonlLedger(state_dir / LEDGER)
        self.releases = ReleaseStore(self.ledger, state_dir / "releases")
        self.calibration = (
            None
            if job.no_privacy
            else calibrate_sigma(job.epsilon, job.delta, releases=job.total_releases)
        )
        self.sigma = 0.0 if self.calibration is None else self.calibration.sigma
        self.threshold = (
            api.default_threshold_sigmas * self.sigma if job.threshold is None else job.threshold
        )
        self.degrees = job.degree_schedule(api.default_degree_end)
        # The releases this run has used so far, by key: each checkpoint lists them.
        self.used: dict[str, LedgerEntry] = {}
        self.pinned = pinned
        self._pinned_vectors: NDArray[np.float32] | None = None
        self._pinned_counts: list[NDArray[np.int64]] = []
        self._votes = votes

    def epsilon_spent(self) -> float:
        if self.job.no_privacy:
            return math.inf
        events = [entry.event for entry in self.ledger.entries()]
        return epsilon_for(events, self.job.delta) if events else 0.0

    def _release(self, key: str, iteration: int, counts: NDArray[np.int64]) -> NDArray[np.int64]:
        """Noisy counts for ``key``: recorded in the ledger before use, reused on resume."""
        if self.job.no_privacy:
            return counts
        event = DpEvent(
            "discrete_gaussian",
            sigma=self.sigma,
            sensitivity=1,
            count=(
                self.job.label_count_releases
                if key == LABEL_COUNTS_KEY
                else self.job.releases_per_iteration
            ),
            description=key,
        )
        noisy = self.releases.release(
            key, iteration, event, lambda: counts + self.noise(key).sample(self.sigma, len(counts))
        )
        entry = self.ledger.get(key)
        if entry is None:  # the release store records before it returns: a broken ledger
            raise CheckpointError(f"release {key!r} is missing from the ledger it was recorded in")
        self.used[key] = entry
        if noisy.shape != counts.shape:
            raise CheckpointError(
                f"the ledger's release {key!r} has {len(noisy)} counts but this run has "
                f"{len(counts)}: the state directory belongs to a different run"
            )
        return noisy

    def _label_weights(self, private: Samples) -> tuple[NDArray[np.float64], str]:
        names = private.label_names
        fractions = self.job.label_fractions
        if fractions == "uniform":
            weights = np.ones(len(names))
        elif fractions == "dp":
            # One record is in one label: the label-count vector has sensitivity 1. One user is
            # counted in at most c_L labels (see user_label_counts).
            if self.job.privacy_unit == "user":
                clean = user_label_counts(
                    private.labels, user_codes(private), len(names), self.job.labels_per_user
                )
            else:
                clean = np.bincount(private.labels, minlength=len(names)).astype(np.int64)
            noisy = self._release(LABEL_COUNTS_KEY, 0, clean)
            weights = np.maximum(noisy, 0).astype(np.float64)
            if weights.sum() == 0:
                weights = np.ones(len(names))
        else:
            check_label_fractions(self.job, names)
            weights = np.array([fractions[name] for name in names], dtype=np.float64)
        source = fractions if isinstance(fractions, str) else "user"
        return weights, source

    def _initial(self, targets: NDArray[np.int64], callbacks: RunCallbacks) -> Samples:
        callbacks.on_phase(0, "generate")
        rng = np.random.default_rng([self.seed, 0])
        parts = [self.generation.random(label, int(n), rng) for label, n in enumerate(targets)]
        return Samples.concat(parts)

    def _iterate(
        self,
        t: int,
        population: Samples,
        votes: VoteCounter,
        targets: NDArray[np.int64],
        callbacks: RunCallbacks,
    ) -> tuple[Samples, dict[str, Any]]:
        job = self.job
        rng = np.random.default_rng([self.seed, t])
        degree = self.degrees[t - 1]
        callbacks.on_phase(t, "embed")
        embed = self.embedder.inner.embed if job.lookahead else self.embedder.embed
        synthetic = prepare_embeddings(
            self.generation.lookahead(
                population, count=job.lookahead, degree=degree, rng=rng, embed=embed
            ),
            job.metric,
        )
        vote_labels = population.labels
        if self.pinned is not None:  # an audit's pinned candidates join the vote (see __init__)
            if self._pinned_vectors is None:
                embedded = self.embedder.inner.embed(self.pinned)
                self._pinned_vectors = prepare_embeddings(embedded, job.metric)
            synthetic = np.concatenate([synthetic, self._pinned_vectors])
            vote_labels = np.concatenate([population.labels, self.pinned.labels])
        callbacks.on_phase(t, "vote")
        counts = votes.counts(t, synthetic, vote_labels)
        callbacks.on_phase(t, "noise")
        noisy = self._release(histogram_key(t), t, counts)
        del counts
        votes.released(t)
        if self.pinned is not None:
            self._pinned_counts.append(noisy[len(population) :])
            noisy = noisy[: len(population)]
        callbacks.on_phase(t, "select")
        scores = threshold_counts(noisy, self.threshold)
        parts, fallbacks, picks, distinct = [], [], 0, 0
        # Without vary_last, the last release picks the output itself: each label's best-voted
        # candidates, distinct, no variation after the last vote (post-processing of the release
        # like any selection). Allocation rounding may leave a label fewer candidates than its
        # target; it then outputs all of them.
        output_voted = t == job.iterations and not job.vary_last
        for label, n_target in enumerate(targets.tolist()):
            members = np.flatnonzero(population.labels == label)
            if output_voted:
                n_select = min(n_target, len(members))
                how: SelectionMethod = "rank"
            else:
                n_select = selection_size(
                    n_target, folds=job.folds, keep_selected=job.keep_selected
                )
                how = job.selection
            chosen = select(scores[members], n_select, how, rng)
            picks += len(chosen.indices)
            distinct += len(np.unique(chosen.indices))
            if chosen.fallback:
                fallbacks.append(population.label_names[label])
            selected = population.take(members[chosen.indices])
            if output_voted:
                parts.append(selected)
                continue
            callbacks.on_phase(t, "vary")
            parts.append(
                next_population(
                    self.generation,
                    selected,
                    n_target,
                    folds=job.folds,
                    keep_selected=job.keep_selected,
                    degree=degree,
                    rng=rng,
                )
            )
        diagnostics = {
            "iteration": t,
            "degree": degree,
            "noisy_vote_mass": int(noisy.sum()),
            "share_above_threshold": float(np.mean(scores > 0)) if len(scores) else 0.0,
            # Selection reads the noisy counts only, so this is DP too: how many different
            # parents the next population grows from (falling: the population loses diversity).
            "distinct_parents_share": distinct / picks if picks else 0.0,
            "uniform_fallback_labels": fallbacks,
        }
        return Samples.concat(parts), diagnostics

    def run(
        self, private: Samples, *, callbacks: RunCallbacks | None = None, resume: bool = False
    ) -> RunResult:
        """Runs (or resumes) the job on ``private`` and returns the final population.

        Raises:
            CheckpointError: state exists without ``resume``, or belongs to another job.
        """
        callbacks = callbacks or _NoCallbacks()
        job_record = self.job.model_dump(mode="json")
        latest = self.checkpoints.latest()
        if latest is not None and not resume:
            raise CheckpointError(
                f"{self.checkpoints.directory} already holds a run: resume it or use a new output"
            )
        if latest is not None and (
            latest.meta.get("job") != job_record or latest.meta.get("seed") != self.seed
        ):
            raise CheckpointError(
                "the checkpoint was made by a different job configuration or seed; "
                "rerun with the original settings or use a new output directory"
            )
        if latest is not None and self.pinned is not None:
            raise CheckpointError("a run with pinned candidates (an audit) cannot resume")
        if latest is not None:
            self.used = self._verified_releases(latest)
        weights, fraction_source = self._label_weights(private)
        targets = allocate(self.job.num_samples, weights)
        # The populations voted on have `candidates` samples; the last one, the output, has
        # `num_samples`. A label given any output keeps at least one candidate.
        voted = np.maximum(allocate(self.job.voted_samples, weights), np.minimum(targets, 1))
        diagnostics: list[dict[str, Any]] = [] if latest is None else latest.meta["diagnostics"]
        if latest is None:
            population = self._initial(voted, callbacks)
            self._checkpoint(0, population, job_record, diagnostics)
            start = 1
            callbacks.on_iteration(IterationReport(0, population, None, {}, self.epsilon_spent()))
        else:
            population, start = latest.population, latest.iteration + 1

        callbacks.on_phase(start, "embed-private")
        votes = self._counter(private)
        for t in range(start, self.job.iterations + 1):
            population, diag = self._iterate(
                t,
                population,
                votes,
                targets if t == self.job.iterations else voted,
                callbacks,
            )
            diagnostics = [*diagnostics, diag]
            self.embedder.forget(set(population.ids.tolist()))
            callbacks.on_phase(t, "checkpoint")
            self._checkpoint(t, population, job_record, diagnostics)
            callbacks.on_iteration(
                IterationReport(t, population, diag["degree"], diag, self.epsilon_spent())
            )
        return RunResult(
            population=population,
            sigma=self.sigma,
            calibration=self.calibration,
            threshold=self.threshold,
            ledger=self.ledger.entries(),
            label_targets=dict(zip(private.label_names, targets.tolist(), strict=True)),
            label_fraction_source=fraction_source,
            nn_backend=votes.backend_name,
            diagnostics=diagnostics,
            pinned_counts=None if self.pinned is None else np.stack(self._pinned_counts),
        )

    def _counter(self, private: Samples) -> VoteCounter:
        if self._votes is not None:
            return self._votes(private)
        job = self.job
        prepared = prepare_private(
            private, self.embedder.inner.embed, metric=job.metric, privacy_unit=job.privacy_unit
        )
        return LocalVotes(job, prepared, self.backend)

    def _checkpoint(
        self,
        t: int,
        population: Samples,
        job_record: dict[str, Any],
        diagnostics: list[dict[str, Any]],
    ) -> None:
        meta = {
            "job": job_record,
            "seed": self.seed,
            "diagnostics": diagnostics,
            "releases": [entry_to_record(entry) for entry in self.used.values()],
        }
        self.checkpoints.save(Checkpoint(t, population, meta))

    def _verified_releases(self, latest: Checkpoint) -> dict[str, LedgerEntry]:
        """The releases ``latest`` was built from, each checked against the ledger.

        A checkpoint proves that its releases were made: the population in it was selected by
        them. The ledger is what the report and the budget count, so a release the checkpoint
        used but the ledger lacks (a deleted, truncated or replaced ledger) would vanish from the
        guarantee, and for the label counts would even be drawn again. Nothing goes on then.

        Raises:
            CheckpointError: a release is missing from the ledger or recorded differently.
        """
        where = f"checkpoint {latest.iteration} in {self.checkpoints.directory}"
        try:
            proven = [entry_from_record(record) for record in latest.meta["releases"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} does not list its releases readably: {exc}") from None
        for entry in proven:
            recorded = self.ledger.get(entry.key)
            if recorded is None or not same_release(recorded, entry):
                found = "is not in the ledger" if recorded is None else "differs in the ledger"
                raise CheckpointError(
                    f"{where} was built from release {entry.key!r} (sha256 "
                    f"{entry.release_sha256[:12]}...), which {found}: the run's state was "
                    "altered, so what it spent can no longer be shown. Restore the original "
                    "ledger to resume, or start again in a new output; the releases it made "
                    "stay spent"
                )
        return {entry.key: entry for entry in proven}
