"""The ``openai`` text generator against a real chat-completions server on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import numpy as np
import pytest

from pe_core.apis import create_api
from pe_core.apis.base import VariationApi
from pe_core.apis.llm_backends import (
    ChatMessage,
    Completion,
    GenerationError,
    TextGenerator,
    create_generator,
)
from pe_core.apis.llm_backends.openai_backend import (
    API_KEY_SETTING,
    BASE_URL_SETTING,
    OpenAIGenerator,
    _retry_after,
    register_openai_backend,
)
from pe_core.errors import PrivevoError
from pe_core.registry import PluginConfigError
from tests.pe_core.contracts import VariationApiContract, word_edit_distance
from tests.privevo.chat_server import ChatServer, Reply, completion, running_chat_server

KEY = "sk-test-0123456789-secret"
LABELS = ["business", "entertainment", "politics", "sport", "tech"]


@pytest.fixture(scope="module")
def chat_server() -> Iterator[ChatServer]:
    with running_chat_server() as server:
        yield server


@pytest.fixture
def server(chat_server: ChatServer) -> ChatServer:
    chat_server.reset()
    return chat_server


@pytest.fixture(autouse=True)
def keyless_backend() -> Iterator[None]:
    """Each test starts, and leaves, the ``openai`` backend as pe_core registers it: no key."""
    register_openai_backend()
    yield
    register_openai_backend()


class Sleeps(list[float]):
    """Records the waits a generator asks for instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def chats(n: int) -> list[tuple[ChatMessage, ...]]:
    system = ChatMessage("system", "Be brief.")
    return [(system, ChatMessage("user", f"Say {i}.")) for i in range(n)]


def generate(generator: TextGenerator, n: int = 1) -> list[Completion]:
    return generator.generate(
        chats(n), max_new_tokens=[7] * n, temperature=0.5, top_p=0.9, seeds=list(range(n))
    )


def test_sends_chat_completion_requests_and_reads_the_answers(server: ChatServer) -> None:
    server.script += [Reply(body=completion(f"answer {i}", 11, 3)) for i in range(3)]
    generator = OpenAIGenerator(server.base_url, "tiny-model", api_key=KEY, concurrency=1)
    answers = generate(generator, 3)
    assert [a.text for a in answers] == ["answer 0", "answer 1", "answer 2"]
    assert [(a.prompt_tokens, a.completion_tokens) for a in answers] == [(11, 3)] * 3
    headers, body = server.requests[0]
    assert headers["authorization"] == f"Bearer {KEY}"
    assert body == {
        "model": "tiny-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say 0."},
        ],
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 0,
        "n": 1,
    }
    assert [b["seed"] for _, b in server.requests] == [0, 1, 2]


def test_no_key_sends_no_authorization_and_missing_usage_counts_the_allowance(
    server: ChatServer,
) -> None:
    server.script.append(Reply(body={"choices": [{"message": {"content": None}}]}))
    (answer,) = generate(OpenAIGenerator(server.base_url + "/", "m"))
    assert answer.text == "" and answer.completion_tokens == 7
    assert "authorization" not in server.requests[0][0]
    assert server.requests[0][0]["host"].startswith("127.0.0.1")


def test_429_waits_as_long_as_retry_after_says(server: ChatServer) -> None:
    server.script += [Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "3"})]
    sleeps = Sleeps()
    (answer,) = generate(OpenAIGenerator(server.base_url, "m", sleep=sleeps))
    assert answer.text
    assert sleeps == [3.0]
    assert len(server.requests) == 2


def test_5xx_is_retried_with_jittered_exponential_backoff(server: ChatServer) -> None:
    server.script += [Reply(503, "busy"), Reply(502, "bad gateway"), Reply(500, "oops")]
    sleeps = Sleeps()
    generator = OpenAIGenerator(server.base_url, "m", backoff_s=0.5, max_retries=3, sleep=sleeps)
    (answer,) = generate(generator)
    assert answer.text and len(server.requests) == 4
    assert len(sleeps) == 3
    assert all(0 <= s <= 0.5 * 2**i for i, s in enumerate(sleeps)), sleeps


def test_persistent_5xx_gives_up_after_max_retries(server: ChatServer) -> None:
    server.script += [Reply(500, "still broken")] * 3
    generator = OpenAIGenerator(server.base_url, "m", max_retries=2, sleep=Sleeps())
    with pytest.raises(GenerationError, match=r"failed after 3 tries .*HTTP 500: still broken"):
        generate(generator)
    assert len(server.requests) == 3


def test_other_4xx_fail_at_once_with_the_servers_message(server: ChatServer) -> None:
    server.script.append(Reply(404, {"error": {"message": "model 'm' does not exist"}}))
    with pytest.raises(GenerationError, match="HTTP 404: model 'm' does not exist; check base_url"):
        generate(OpenAIGenerator(server.base_url, "m", sleep=Sleeps()))
    assert len(server.requests) == 1


def test_a_slow_server_hits_the_request_timeout(server: ChatServer) -> None:
    server.script += [Reply(delay_s=5.0, body=completion("late"))] * 2
    generator = OpenAIGenerator(
        server.base_url, "m", request_timeout_s=0.2, max_retries=1, sleep=Sleeps()
    )
    with pytest.raises(GenerationError, match=r"after 2 tries.*no answer within request_timeout"):
        generate(generator)
    assert len(server.requests) == 2


def test_a_wait_past_the_total_timeout_fails_without_waiting(server: ChatServer) -> None:
    server.script.append(Reply(429, "busy", {"Retry-After": "100"}))
    sleeps = Sleeps()
    generator = OpenAIGenerator(server.base_url, "m", total_timeout_s=30, sleep=sleeps)
    with pytest.raises(GenerationError, match="would pass total_timeout_s=30"):
        generate(generator)
    assert sleeps == [] and len(server.requests) == 1


@pytest.mark.parametrize(
    "body", ["not json at all", {"choices": []}, {"choices": [{"message": {"content": 3}}]}]
)
def test_a_body_that_is_not_a_chat_completion_is_an_error(server: ChatServer, body) -> None:
    server.script.append(Reply(body=body))
    with pytest.raises(GenerationError, match="not a chat completion"):
        generate(OpenAIGenerator(server.base_url, "m", sleep=Sleeps()))
    assert len(server.requests) == 1


def test_connection_errors_are_retried(server: ChatServer) -> None:
    # The server's own port, once it is closed, refuses connections.
    with running_chat_server() as other:
        closed = other.base_url
    sleeps = Sleeps()
    with pytest.raises(GenerationError, match=r"after 3 tries.*connection failed"):
        generate(OpenAIGenerator(closed, "m", max_retries=2, sleep=sleeps))
    assert len(sleeps) == 2


def test_concurrency_limits_requests_in_flight(server: ChatServer) -> None:
    server.script += [Reply(body=completion(f"slow {i}"), delay_s=0.3) for i in range(6)]
    generator = OpenAIGenerator(server.base_url, "m", concurrency=2)
    answers = generate(generator, 6)
    assert sorted(a.text for a in answers) == [f"slow {i}" for i in range(6)]
    assert server.max_in_flight <= 2


def test_the_key_never_reaches_logs_or_errors(
    server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"invalid key {KEY}"
    server.script += [Reply(429, {"error": {"message": echo}}), Reply(401, {"error": echo})]
    generator = OpenAIGenerator(server.base_url, "m", api_key=KEY, sleep=Sleeps())
    with pytest.raises(GenerationError) as error:
        generate(generator)
    assert "HTTP 401" in str(error.value) and API_KEY_SETTING in str(error.value)
    assert "invalid key ***" in str(error.value)
    assert "HTTP 429" in caplog.text
    for where in (str(error.value), repr(error.value), caplog.text, repr(generator)):
        assert KEY not in where


def test_retry_after_forms() -> None:
    assert _retry_after("2.5") == 2.5
    assert _retry_after("-1") == 0.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("nan") is None and _retry_after("inf") is None
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert _retry_after(past) == 0.0
    future = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    assert 3000 < (_retry_after(future) or 0) <= 3600


class TestRegisteredFactory:
    def test_registration_is_idempotent(self) -> None:
        register_openai_backend()
        register_openai_backend()

    def test_the_key_the_edge_passes_goes_only_to_the_server_it_allows(
        self, server: ChatServer
    ) -> None:
        register_openai_backend(api_key=KEY)
        with pytest.raises(PrivevoError, match=f"only sent to the server that {BASE_URL_SETTING}"):
            create_generator("openai", base_url=server.base_url, model="m")
        register_openai_backend(api_key=KEY, allowed_base_url="http://127.0.0.1:1/v1")
        with pytest.raises(PrivevoError, match=f"set {BASE_URL_SETTING}={server.base_url}"):
            create_generator("openai", base_url=server.base_url, model="m")
        register_openai_backend(api_key=KEY, allowed_base_url=server.base_url + "/")
        generator = create_generator("openai", base_url=server.base_url, model="m")
        assert KEY not in repr(generator)
        generate(generator)
        assert server.requests[0][0]["authorization"] == f"Bearer {KEY}"

    def test_without_a_key_none_is_sent_whatever_the_environment_holds(
        self, server: ChatServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # pe_core reads no setting: only what an edge passes in is sent.
        monkeypatch.setenv(API_KEY_SETTING, KEY)
        monkeypatch.setenv(BASE_URL_SETTING, server.base_url)
        generate(create_generator("openai", base_url=server.base_url, model="m"))
        assert "authorization" not in server.requests[0][0]

    def test_a_key_in_the_job_config_is_refused(self, server: ChatServer) -> None:
        with pytest.raises(PrivevoError, match=f"must not hold api_key.*{API_KEY_SETTING}"):
            create_generator("openai", base_url=server.base_url, model="m", api_key=KEY)
        with pytest.raises(PluginConfigError, match="it accepts: base_url, model"):
            create_generator("openai", base_url=server.base_url, modell="m")


class TestLlmOverHttpContract(VariationApiContract):
    """The llm API's own logic, fast: the fake server stands in for the language model."""

    @pytest.fixture(scope="class")
    @classmethod
    def api(cls, chat_server: ChatServer) -> VariationApi:
        return create_api(
            "llm",
            label_names=LABELS,
            backend="openai",
            backend_config={"base_url": chat_server.base_url, "model": "fake"},
            random_words=[8, 16],
        )


def test_the_llm_api_over_http_cleans_answers_and_keeps_unmasked_words(
    chat_server: ChatServer,
) -> None:
    api = create_api(
        "llm",
        label_names=LABELS,
        backend="openai",
        backend_config={"base_url": chat_server.base_url, "model": "fake"},
        paraphrase_above=0.7,
    )
    population = api.random(3, 6, np.random.default_rng(0))
    assert population.texts is not None
    assert all(t.startswith("sport ") for t in population.texts)
    paraphrased = api.variation(population, 1.0, np.random.default_rng(1))
    assert paraphrased.texts is not None
    assert not any("Sure" in t or '"' in t for t in paraphrased.texts)
    assert set(paraphrased.params["llm_op"].tolist()) == {"paraphrase"}
    filled = api.variation(population, 0.3, np.random.default_rng(2))
    assert filled.texts is not None
    assert set(filled.params["llm_op"].tolist()) == {"blanks"}
    # The fake fills each blank with one word, so only the masked words can differ.
    for before, after in zip(population.texts, filled.texts, strict=True):
        assert word_edit_distance(before, after) <= round(0.3 * len(before.split()))
