"""The privacy report says DP only for a secure run within the operator's policy."""

from __future__ import annotations

import pytest

from pe_core.apis import create_api
from pe_core.config import PeJob
from pe_core.embedders import create_embedder
from pe_core.policy import PrivacyPolicy
from pe_core.privacy import DiscreteGaussianSampler
from pe_core.report import NOT_PRIVATE, privacy_report
from pe_core.runner import PrivateEvolution, RunResult, noise_factory

JOB = PeJob(epsilon=4.0, delta=1e-5, iterations=1, num_samples=40, nn_backend="numpy-blocked")


@pytest.fixture(scope="module")
def result(tmp_path_factory, private_digits) -> RunResult:
    noise, _ = noise_factory(JOB, 0)
    engine = PrivateEvolution(
        JOB,
        api=create_api(JOB.api, label_names=private_digits.label_names),
        embedder=create_embedder(JOB.embedding),
        noise=noise,
        state_dir=tmp_path_factory.mktemp("state"),
        seed=0,
    )
    return engine.run(private_digits)


def report(result: RunResult, policy: PrivacyPolicy) -> dict:
    return privacy_report(
        JOB,
        result,
        sampler=DiscreteGaussianSampler(),
        label_source="declared",
        generator_public_data="none",
        policy=policy,
    )


def test_a_secure_run_within_the_policy_is_dp(result: RunResult) -> None:
    written = report(result, PrivacyPolicy())
    assert (written["status"], written["private"], written["warnings"]) == ("DP", True, [])
    assert written["policy"] == {"max_delta": 1e-5, "require_declared_labels": False}


def test_a_delta_above_the_policy_is_not_called_dp(result: RunResult) -> None:
    """--delta 0.5 was reported as DP: an (epsilon, delta) pair, but no privacy to speak of."""
    written = report(result, PrivacyPolicy(max_delta=1e-6))
    assert written["status"] == NOT_PRIVATE and written["private"] is False
    assert "delta 1e-05 is above the policy's maximum of 1e-06" in written["warnings"][0]
