"""The library entry points: ``privevo.run`` and ``privevo.calibrate``.

The same job model as the CLI's flags and the service's job body (``pe_core.config.PeJob``),
the same assembly path (``pe_core.job``), the same outputs. The engine loads on the first call,
not at ``import privevo``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pe_core.privacy import Calibration
    from pe_core.samples import Samples


@dataclass(frozen=True)
class RunResult:
    """A finished run.

    Attributes:
        out: the output folder.
        report: the privacy report (``privacy_report.json``): ``report["epsilon"]``,
            ``report["status"]`` ("DP" or "NOT PRIVATE"), every release.
        evaluation: NOT DP metrics per iteration against ``eval_data`` (empty without it).
        seconds: how long the run took.
    """

    out: Path
    report: dict[str, Any]
    evaluation: list[dict[str, Any]]
    seconds: float

    @property
    def report_html(self) -> Path:
        """The shareable page of the run (DP outputs only)."""
        return self.out / "report.html"

    @property
    def synthetic_dir(self) -> Path:
        return self.out / "synthetic"

    def synthetic(self) -> Samples:
        """The DP synthetic dataset, loaded (images as uint8 arrays, or texts)."""
        from pe_core.datasets import load_dataset

        # A simulator's parameters may include a "text" column (drawtext's), so the modality is
        # read from the layout rather than guessed from the table's columns.
        images = (self.synthetic_dir / "images").is_dir()
        return load_dataset(self.synthetic_dir, modality="image" if images else "text")


def run(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] = "privevo-out",
    *,
    eval_data: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> RunResult:
    """Runs Private Evolution on ``data`` and writes a DP synthetic dataset to ``out``.

    Example::

        import privevo
        result = privevo.run("data/mnist/test.npz", "runs/mnist", epsilon=1.0, iterations=4)
        print(result.report["epsilon"], result.report_html)

    Args:
        data: the private data (an image folder or zip, ``.npz``, ``.jsonl``, ``.csv`` or
            ``.parquet``).
        out: the output folder; it must be new or empty unless ``resume``.
        eval_data: held-out real data for the NOT DP evaluation in ``out/eval``.
        resume: continue the run in ``out`` (its recorded settings win).
        progress: print a line per iteration to stderr.
        environ: where the privacy policy's settings are read (``PRIVEVO_MAX_DELTA``, ...);
            default ``os.environ``.
        **options: any key of the README's configuration reference (``epsilon``,
            ``iterations``, ``num_samples``, ``api``, ``api_config``, ``embedding``,
            ``text_column``, ``user_column``, ...).

    Raises:
        pe_core.checks.JobRefused: the job cannot run on this data (every problem is listed).
        pe_core.errors.PrivevoError: bad data, settings or state, with what to do.
    """
    from privevo.local import RunSpec, local_policy, recorded_settings, run_local

    settings: dict[str, Any] = recorded_settings(Path(out)) if resume else {}
    settings.update(options, data=data, out=out)
    if eval_data is not None:
        settings["eval_data"] = eval_data
    spec = RunSpec.model_validate(settings)
    policy = local_policy(os.environ if environ is None else environ)
    done = run_local(spec, policy=policy, resume=resume, progress=progress)
    return RunResult(done.layout.root, done.report, done.evaluation, done.seconds)


def calibrate(
    epsilon: float, delta: float = 1e-6, iterations: int = 4, **options: Any
) -> Calibration:
    """The noise sigma a job with these settings runs with, as its run would calibrate it.

    Args:
        epsilon, delta: the privacy target of the whole run.
        iterations: T.
        **options: any other job key that changes the number of releases: ``k``,
            ``label_fractions`` ("dp" adds the label counts), ``privacy_unit``,
            ``votes_per_user``, ``labels_per_user``.

    Returns:
        The calibration: ``sigma``, the certified ``epsilon`` (<= the target) and ``releases``.
    """
    from pe_core.config import PeJob
    from pe_core.privacy import calibrate_sigma

    job = PeJob(epsilon=epsilon, delta=delta, iterations=iterations, **options)
    return calibrate_sigma(job.epsilon, job.delta, releases=job.total_releases)
