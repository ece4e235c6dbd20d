import math

import pytest
from pydantic import ValidationError

from pe_core.config import PeJob


def test_defaults_are_private_and_fixed_delta():
    job = PeJob()
    assert job.delta == 1e-6
    assert not job.no_privacy and not job.insecure_test_noise
    assert job.label_fractions == "uniform"


def test_unknown_fields_are_refused():
    suggestion = r"unknown key 'epsilom' \(did you mean 'epsilon'\?\)"
    with pytest.raises(ValidationError, match=suggestion):
        PeJob.model_validate({"epsilom": 1.0})


@pytest.mark.parametrize(
    "fields",
    [
        {"epsilon": 0},
        {"epsilon": -1},
        {"epsilon": math.inf},
        {"delta": 0},
        {"delta": 1},
        {"iterations": 0},
        {"k": 0},
        {"degrees": [0.5]},
        {"degrees": [2.0, 0.5, 0.1, 0.1]},
        {"label_fractions": {"a": -1.0}},
        {"label_fractions": {"a": 0.0}},
        {"no_privacy": True, "epsilon": math.inf, "label_fractions": "dp"},
    ],
)
def test_impossible_settings_are_refused(fields):
    with pytest.raises(ValidationError):
        PeJob.model_validate(fields)


def test_no_privacy_allows_infinite_epsilon():
    assert PeJob(no_privacy=True, epsilon=math.inf).no_privacy


def test_total_releases_counts_k_per_iteration_and_dp_fractions():
    assert PeJob(k=3, iterations=5).total_releases == 15
    assert PeJob(k=1, iterations=5, label_fractions="dp").total_releases == 6


def test_degree_schedule_linear_and_explicit():
    assert PeJob(iterations=3, degree_start=1.0, degree_end=0.0).degree_schedule(0.2) == [
        1.0,
        0.5,
        0.0,
    ]
    assert PeJob(iterations=1).degree_schedule(0.2) == [1.0]
    assert PeJob(iterations=2, degrees=[0.3, 0.1]).degree_schedule(0.2) == [0.3, 0.1]


def test_degree_end_defaults_to_the_apis():
    assert PeJob(iterations=5).degree_schedule(0.2) == [1.0, 0.8, 0.6, 0.4, 0.2]
    assert PeJob(iterations=3).degree_schedule(1.0) == [1.0, 1.0, 1.0]
    # A job's own degree_end wins over the API's.
    assert PeJob(iterations=3, degree_end=0.0).degree_schedule(1.0) == [1.0, 0.5, 0.0]
