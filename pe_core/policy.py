"""The operator's privacy policy: limits on what may run, and on what a report may call DP.

Each edge builds one :class:`PrivacyPolicy` from its own settings (the service from
``PRIVEVO_*`` settings, the CLI from the same environment variables) and passes it in; the
engine never reads settings. The gateway refuses a job outside the policy before reserving any
budget, the CLI before writing anything, and a worker again before it runs (a job queued under
an older policy, or sent by anything but the gateway, meets the worker's own).
"""

from __future__ import annotations

from dataclasses import dataclass

from pe_core.config import PeJob

DEFAULT_MAX_DELTA = 1e-5
"""The largest delta a job may use unless the operator says otherwise. delta is the probability
the guarantee may fail outright for a record; the usual rule wants it well below 1/n, and 1e-5
is already that for a dataset of 100,000 records (the default delta is 1e-6)."""


@dataclass(frozen=True)
class PrivacyPolicy:
    """What the operator allows.

    Attributes:
        max_delta: the largest delta a job may use, in (0, 1). A report says "DP" only for a
            delta within it.
        require_declared_labels: jobs must declare their label set (``labels``). Otherwise the
            label set is read from the private records' labels, which the guarantee treats as
            public: an operator who cannot vouch for that requires them declared.
        allow_insecure_test_noise: seeded test noise may run (its reports say NOT PRIVATE).
            The CLI allows it (the user runs on their own data); a service allows it only when
            its operator says so.
    """

    max_delta: float = DEFAULT_MAX_DELTA
    require_declared_labels: bool = False
    allow_insecure_test_noise: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.max_delta, int | float) and 0 < self.max_delta < 1):
            raise ValueError(f"the maximum delta must lie in (0, 1), got {self.max_delta!r}")

    def refusals(self, job: PeJob) -> list[str]:
        """What in ``job`` the policy does not allow, each saying how to fix it."""
        problems = []
        if not job.no_privacy and job.delta > self.max_delta:
            problems.append(
                f"delta: {job.delta:g} is above this installation's maximum of "
                f"{self.max_delta:g}; use a delta of at most {self.max_delta:g} (the default is "
                "1e-6), or ask the operator to raise PRIVEVO_MAX_DELTA"
            )
        if self.require_declared_labels and not job.labels:
            problems.append(
                "labels: this installation requires the label set to be declared (it is "
                "treated as public, so it must not be read from the private records); give "
                "the job's labels, e.g. labels: [cat, dog]"
            )
        if job.insecure_test_noise and not job.no_privacy and not self.allow_insecure_test_noise:
            problems.append(
                "insecure_test_noise: seeded test noise is NOT PRIVATE and this installation "
                "does not allow it; leave it out (PRIVEVO_ALLOW_INSECURE_TEST_NOISE enables it "
                "for test installations)"
            )
        return problems

    def within(self, job: PeJob) -> bool:
        """Whether a report of ``job`` may say DP as far as the policy goes."""
        return job.delta <= self.max_delta
