"""A job is checked against its data's public shape before anything is reserved or written."""

from __future__ import annotations

import inspect

import pytest

from pe_core.checks import JobRefused, check_job
from pe_core.config import PeJob
from pe_core.policy import PrivacyPolicy
from pe_core.samples import DataShape

DIGITS = DataShape("image", tuple("0123456789"), (28, 28, 1))
TEXTS = DataShape("text", ("negative", "positive"), None)


@pytest.mark.parametrize(
    ("job", "data"),
    [
        (PeJob(), DIGITS),
        (PeJob(api="diffusion", embedding="inception"), DIGITS),
        (PeJob(api="grammar", embedding="minilm", num_samples=2), TEXTS),
        (PeJob(api_config={"image_size": 64}), DataShape("image", ("a", "b"), (64, 64, 1))),
        (PeJob(api_config={"texts_per_label": {"seven": ["7"]}}), DataShape("image", ("seven",))),
        (
            PeJob(
                label_fractions={"negative": 1, "positive": 3}, api="grammar", embedding="minilm"
            ),
            TEXTS,
        ),
    ],
)
def test_jobs_their_data_can_serve_pass(job: PeJob, data: DataShape) -> None:
    check_job(job, data, policy=PrivacyPolicy())


@pytest.mark.parametrize(
    ("job", "data", "messages"),
    [
        (PeJob(api="no-such-api"), DIGITS, ["api: unknown variation API 'no-such-api'"]),
        (PeJob(api="drawtxt"), DIGITS, ["(did you mean 'drawtext'?)"]),
        (PeJob(embedding="mini"), DIGITS, ["embedding: unknown embedder 'mini' (did you mean"]),
        (PeJob(nn_backend="annoy"), DIGITS, ["nn_backend: unknown 'annoy'; valid names: auto,"]),
        (PeJob(api_config={"image_sise": 28}), DIGITS, ["(did you mean 'image_size'?)"]),
        (PeJob(api_config={"label_names": ["x"]}), DIGITS, ["takes no parameter 'label_names'"]),
        (PeJob(embedding_config={"sizes": 7}), DIGITS, ["embedding_config: embedder 'raw-pixels'"]),
        (
            PeJob(),
            TEXTS,
            [
                "api: 'drawtext' works on images but the dataset holds texts; choose an api for "
                "texts (grammar or llm)",
                "embedding: 'raw-pixels' works on images",
            ],
        ),
        (PeJob(api="grammar", embedding="minilm"), DIGITS, ["api: 'grammar' works on texts"]),
        (
            PeJob(),
            DataShape("image", ("0", "1"), (64, 64, 3)),
            ["drawtext draws 28x28 grayscale images but the dataset's are 64x64 with 3"],
        ),
        (
            PeJob(),
            DataShape("image", ("0", "1"), (64, 64, 1)),
            ["set api_config.image_size: 64"],
        ),
        (
            PeJob(),
            DataShape("image", ("cat_three", "seven", "7"), (28, 28, 1)),
            ["would draw ['cat_three', 'seven'] as words"],
        ),
        (
            PeJob(api="diffusion"),
            DataShape("image", ("0",), (32, 32, 3)),
            ["makes 28x28 images with 1 channel(s) but the dataset's are 32x32 with 3"],
        ),
        (PeJob(num_samples=5), DIGITS, ["leave label(s) ['5', '6', '7', '8', '9'] without any"]),
        (
            PeJob(
                api="grammar", embedding="minilm", label_fractions={"negative": 1, "positive": 0}
            ),
            TEXTS,
            ["label_fractions give label(s) ['positive'] no share"],
        ),
        (
            PeJob(
                api="grammar",
                embedding="minilm",
                num_samples=10,
                label_fractions={"negative": 1000, "positive": 1},
            ),
            TEXTS,
            ["leave label(s) ['positive'] without any", "or raise their label_fractions"],
        ),
        (
            PeJob(api="grammar", embedding="minilm", label_fractions={"negative": 1.0}),
            TEXTS,
            ["label_fractions must name every label exactly: unknown [], missing ['positive']"],
        ),
        (PeJob(), DataShape("image", (), (28, 28, 1)), ["labels: the job has no labels"]),
    ],
)
def test_jobs_their_data_cannot_serve_are_refused_with_every_problem(
    job: PeJob, data: DataShape, messages: list[str]
) -> None:
    with pytest.raises(JobRefused) as refused:
        check_job(job, data, policy=PrivacyPolicy())
    for message in messages:
        assert message in str(refused.value)


def test_the_checks_see_public_inputs_only() -> None:
    # The job and the schema: no records, no counts, so a refusal reveals nothing private.
    assert list(inspect.signature(check_job).parameters) == ["job", "data", "policy"]
    assert set(DataShape.__dataclass_fields__) == {"modality", "labels", "image_shape", "has_users"}


@pytest.mark.parametrize(
    ("job", "policy", "message"),
    [
        (PeJob(delta=0.5), PrivacyPolicy(), "delta: 0.5 is above this installation's maximum"),
        (PeJob(delta=2e-5), PrivacyPolicy(), "use a delta of at most 1e-05"),
        (PeJob(delta=1e-4), PrivacyPolicy(max_delta=1e-5), "PRIVEVO_MAX_DELTA"),
        (PeJob(), PrivacyPolicy(require_declared_labels=True), "requires the label set"),
        (
            PeJob(insecure_test_noise=True),
            PrivacyPolicy(),
            "insecure_test_noise: seeded test noise is NOT PRIVATE",
        ),
    ],
)
def test_what_the_policy_does_not_allow_is_refused(
    job: PeJob, policy: PrivacyPolicy, message: str
) -> None:
    with pytest.raises(JobRefused, match=message):
        check_job(job, DIGITS, policy=policy)


@pytest.mark.parametrize(
    ("job", "policy"),
    [
        (PeJob(delta=1e-5), PrivacyPolicy()),
        (PeJob(delta=1e-4), PrivacyPolicy(max_delta=1e-4)),
        (PeJob(labels=list("0123456789")), PrivacyPolicy(require_declared_labels=True)),
        (PeJob(insecure_test_noise=True), PrivacyPolicy(allow_insecure_test_noise=True)),
    ],
)
def test_what_the_policy_allows_passes(job: PeJob, policy: PrivacyPolicy) -> None:
    check_job(job, DIGITS, policy=policy)


@pytest.mark.parametrize("max_delta", [0.0, 1.0, -1e-6, float("nan"), float("inf")])
def test_a_policy_needs_a_maximum_delta_in_0_1(max_delta: float) -> None:
    with pytest.raises(ValueError, match="maximum delta"):
        PrivacyPolicy(max_delta=max_delta)
