"""A language-model variation API for text: Aug-PE's random and variation prompts.

Aug-PE (Xie et al., arXiv:2403.01749) runs PE on text with an instruction-tuned language model:

* random API: label-conditioned generation prompts; each prompt gets random fills
  (a subcategory or keyword of the label, a writing style, a length) so that the initial
  population is diverse;
* variation API: the model rewrites a selected sample, either as a paraphrase or by
  filling in blanks where a share of its words was masked, asked for a length drawn around the
  source's.

Here the variation ``degree`` (PE's strength schedule) sets how far a variation moves: degree 0
keeps the text; above ``paraphrase_above`` (0 by default: every variation) the model
paraphrases, sampling at a temperature that follows the degree (:func:`paraphrase_temperature`);
up to it, it masks a share ``degree`` of the words (at least one) and asks for the blanks to be
filled. A small model often rewrites more than the blanks, so a fill-in answer is aligned back
onto the masked text (see :func:`fill_blanks`): only the masked words can change, so how far a
variation moves stays tied to the degree whatever the model does. The default is paraphrases
because SmolLM2-135M fills blanks with word salad, and paraphrases scored higher on both text
sets of the quality benchmark.

Prompts come from four templates (``system``, ``random``, ``paraphrase``, ``blanks``) with
defaults that ``templates`` can override, as a YAML file or inline strings::

    system: You write short texts. Reply with the text only.
    random: 'Write about {words} words of {label} news about {topic}, as {style}.'
    paraphrase: "Rewrite this {label} text in about {words} words.\\n\\nText: {text}"

Placeholders: ``random`` may use {label} (required), {topic}, {style} and {words};
``paraphrase`` and ``blanks`` may use {label}, {words} and {text} (required); ``system`` none.
{label} is the label's description where ``descriptions`` gives one, else its name. Literal
braces are written ``{{`` and ``}}``.

The generator is a :class:`~pe_core.apis.llm_backends.TextGenerator` chosen by name
(``transformers`` by default, ``vllm``, ``openai``).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml
from numpy.typing import NDArray

from pe_core.apis.base import check_variation_input
from pe_core.apis.llm_backends import (
    Chat,
    ChatMessage,
    GenerationError,
    TextGenerator,
    create_generator,
)
from pe_core.errors import PrivevoError
from pe_core.samples import Modality, Samples, new_ids

BLANK = "___"
"""How a blank looks in a fill-in prompt; a run of masked words becomes one blank."""
PREAMBLE_TOKENS = 12
"""Tokens allowed on top of the asked length for a chat preamble ("Sure! Here is ...")."""
PARAPHRASE_TEMPERATURE_FLOOR = 0.5
"""The share of ``temperature`` a paraphrase samples at as its degree nears 0 (see
:func:`paraphrase_temperature`)."""
OP_PARAM = "llm_op"
"""``Samples.params`` column saying how each text was made: random, blanks, paraphrase, copy
(degree 0) or fallback (the model's answers stayed empty or, for a paraphrase, gave the source's
words back, so the source text was kept)."""

DEFAULT_STYLES = (
    "a short, plain text",
    "a casual, conversational text",
    "a formal text",
    "a concise text",
    "a detailed, descriptive text",
    "a text with a concrete example",
    "a lively text",
    "a text in simple, everyday words",
)
"""Writing styles that vary the register and the detail but name no genre (news styles such as
"a press release" made off-genre texts for other data); the genre belongs in ``descriptions``
or ``styles``."""


def paraphrase_temperature(temperature: float, degree: float) -> float:
    """The temperature a paraphrase at ``degree`` samples at: ``temperature`` at degree 1,
    falling linearly to ``PARAPHRASE_TEMPERATURE_FLOOR * temperature`` as the degree nears 0.

    The prompt's wording did not move SmolLM2-135M's paraphrases ("change only a few words",
    "about half of the words" or "the wording and the sentence structure": MiniLM cosine to
    the source 0.45-0.50 on 48 fortunes at temperature 1), the temperature did (0.60-0.70 at
    0.6). Below half of it, paraphrases of one text repeat each other (four of each of 12
    fortunes: 35 of 48 distinct at 0.2, 42 at 0.45 and at 0.6), hence the floor.
    """
    return temperature * (
        PARAPHRASE_TEMPERATURE_FLOOR + (1 - PARAPHRASE_TEMPERATURE_FLOOR) * degree
    )


class PromptTemplateError(PrivevoError):
    """A prompt template is malformed; the message names the template and the fault."""


class GenerationCapError(PrivevoError):
    """A call would take the API past a per-job cap; nothing of that call was spent."""


@dataclass(frozen=True)
class PromptTemplates:
    """The four prompt templates (see the module docstring for their placeholders)."""

    system: str = "You write short texts. Reply with the requested text only: no title, no notes."
    random: str = (
        'Write a text of about {words} words in the category "{label}", about {topic}, written '
        "as {style}."
    )
    paraphrase: str = (
        'Rewrite the following text from the category "{label}" in about {words} words. Keep '
        "its topic and meaning; change the wording and the sentence structure.\n\nText: {text}"
    )
    blanks: str = (
        'Fill in each blank (___) in the following text from the category "{label}" with '
        "suitable words, so that the whole text has about {words} words. Keep every other word "
        "as it is and reply with the whole completed text.\n\nText: {text}"
    )


# Per template: the placeholders it may use, and those it must use.
TEMPLATE_FIELDS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "system": (frozenset(), frozenset()),
    "random": (frozenset({"label", "topic", "style", "words"}), frozenset({"label"})),
    "paraphrase": (frozenset({"label", "text", "words"}), frozenset({"text"})),
    "blanks": (frozenset({"label", "text", "words"}), frozenset({"text"})),
}


def _check_template(name: str, template: Any, source: str) -> None:
    where = f"{source}: template {name!r}"
    if not isinstance(template, str):
        raise PromptTemplateError(f"{where} must be a string, got {template!r}")
    allowed, required = TEMPLATE_FIELDS[name]
    described = ", ".join(f"{{{f}}}" for f in sorted(allowed)) or "none"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PromptTemplateError(
            f"{where}: {exc}; write literal braces as {{{{ and }}}}"
        ) from None
    used = set()
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise PromptTemplateError(
                f"{where}: {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not a plain placeholder; placeholders: "
                f"{described}"
            )
        used.add(field)
    unknown = sorted(used - allowed)
    if unknown:
        raise PromptTemplateError(
            f"{where} uses unknown placeholders {unknown}; it may use {described}"
        )
    missing = sorted(required - used)
    if missing:
        raise PromptTemplateError(
            f"{where} must use the placeholders {['{' + m + '}' for m in missing]}"
        )


def load_templates(spec: str | Path | Mapping[str, Any] | None = None) -> PromptTemplates:
    """Validates prompt templates and fills the ones not given with the defaults.

    Args:
        spec: None for the defaults; a mapping ``{name: template}``; or a path to a YAML file
            holding such a mapping. Names are ``system``, ``random``, ``paraphrase``,
            ``blanks``.

    Raises:
        PromptTemplateError: the file cannot be read, a name is unknown, a template is not a
            string, uses a placeholder its kind does not know, or lacks a required one.
    """
    if spec is None:
        return PromptTemplates()
    source = "api_config.templates"
    if isinstance(spec, str | Path):
        source = str(spec)
        try:
            spec = yaml.safe_load(Path(spec).read_text("utf-8"))
        except OSError as exc:
            raise PromptTemplateError(f"{source}: cannot read the templates file: {exc}") from None
        except yaml.YAMLError as exc:
            raise PromptTemplateError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(spec, Mapping):
        raise PromptTemplateError(
            f"{source}: templates are a mapping of {sorted(TEMPLATE_FIELDS)} to strings"
        )
    unknown = sorted(str(name) for name in spec if name not in TEMPLATE_FIELDS)
    if unknown:
        raise PromptTemplateError(
            f"{source}: unknown templates {unknown}; the templates are {sorted(TEMPLATE_FIELDS)}"
        )
    for name, template in spec.items():
        _check_template(name, template, source)
    return replace(PromptTemplates(), **dict(spec))


_LEADING = (
    re.compile(r"^(?:sure|certainly|of course|okay|ok|absolutely|great)\s*[,!.]\s*", re.I),
    re.compile(r"^(?:here(?:'s| is| are)|below is)\b[^\n]{0,100}?:\s*", re.I),
    re.compile(
        r"^(?:[\w-]+\s+){0,3}(?:text|version|paragraph|article|sentence|answer|output)\s*:\s*",
        re.I,
    ),
    # A first line that ends in a colon introduces what follows ("The new text would be:"),
    # and an answer that is only such a line was cut before the text began.
    re.compile(r"^[^\n]{0,120}:[ \t]*(?:\n\s*|$)"),
)
_TRAILING_NOTE = re.compile(r"\n\s*\(?(?:notes?|explanation|changes made)\s*:.*$", re.I | re.S)
_QUOTES = {'"': '"', "“": "”", "'": "'", "«": "»"}


def clean_output(text: str) -> str:
    """Strips what a chat model wraps around the requested text.

    Removes chat preambles ("Sure! Here is the rewritten text:"), answer labels ("Text:"), a
    first line ending in a colon, trailing notes after a line break ("Note: ..."), markdown
    bold and headings, and quotes around the whole answer; collapses whitespace to single
    spaces. May return "".
    """
    text = _TRAILING_NOTE.sub("", text.strip())
    text = re.sub(r"^#+\s*", "", text.replace("**", ""), flags=re.M).strip()
    changed = True
    while changed:
        before = text
        for pattern in _LEADING:
            text = pattern.sub("", text, count=1)
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        changed = text != before
    return " ".join(text.split())


@dataclass(frozen=True)
class MaskedText:
    """A text with some words hidden.

    Attributes:
        parts: the kept words in order, with None where a blank stands.
        hidden: how many consecutive words each blank hides, in order.
    """

    parts: tuple[str | None, ...]
    hidden: tuple[int, ...]

    def prompt_text(self) -> str:
        """The text as the fill-in prompt shows it, blanks written as :data:`BLANK`."""
        return " ".join(BLANK if part is None else part for part in self.parts)


def mask_words(words: Sequence[str], share: float, rng: np.random.Generator) -> MaskedText:
    """Hides ``max(1, round(share * n))`` of the n words, chosen uniformly without replacement.

    Consecutive hidden words merge into one blank (Aug-PE's fill-in-the-blanks variation).
    """
    n = len(words)
    count = min(n, max(1, round(share * n)))
    hidden = set(rng.choice(n, size=count, replace=False).tolist()) if n else set()
    parts: list[str | None] = []
    runs: list[int] = []
    for i, word in enumerate(words):
        if i not in hidden:
            parts.append(word)
        elif parts and parts[-1] is None:
            runs[-1] += 1
        else:
            parts.append(None)
            runs.append(1)
    return MaskedText(tuple(parts), tuple(runs))


def _key(word: str) -> str:
    """How words are compared when aligning an answer: case and punctuation ignored."""
    return "".join(ch for ch in word.lower() if ch.isalnum())


def _same_words(a: str, b: str) -> bool:
    """Whether two texts have the same words, case and punctuation ignored."""
    return [k for k in map(_key, a.split()) if k] == [k for k in map(_key, b.split()) if k]


def fill_blanks(masked: MaskedText, answer: str) -> str:
    """The masked text with its blanks filled from a model's answer.

    The answer's words are aligned with the kept words (``difflib``, case and punctuation
    ignored). Answer words that fall between two aligned kept words go to the blanks between
    them, split in proportion to the words each blank hid; answer words where no blank stands
    are dropped. Each fill is cut to ``2 * hidden + 1`` words, and a blank that gets no words
    is deleted. Kept words stay as they were even when the model rewrote them, so a variation
    never changes more than its blanks.
    """
    answer_words = [w for w in answer.split() if w.strip("_")]
    # A blank's key never equals a word's key (words are alphanumeric keys), so blanks always
    # lie in the gaps between aligned runs.
    template = ["\0" if part is None else _key(part) for part in masked.parts]
    blank_at = [i for i, part in enumerate(masked.parts) if part is None]
    fills: dict[int, list[str]] = {}
    matcher = difflib.SequenceMatcher(None, template, [_key(w) for w in answer_words], False)
    t_prev = a_prev = 0
    for t_start, a_start, size in matcher.get_matching_blocks():
        gap = [b for b, i in enumerate(blank_at) if t_prev <= i < t_start]
        words = answer_words[a_prev:a_start]
        if gap:
            weights = np.cumsum([masked.hidden[b] for b in gap])
            cuts = [0, *np.round(len(words) * weights / weights[-1]).astype(int).tolist()]
            for j, b in enumerate(gap):
                fills[b] = words[cuts[j] : cuts[j + 1]][: 2 * masked.hidden[b] + 1]
        t_prev, a_prev = t_start + size, a_start + size
    out: list[str] = []
    blank = 0
    for part in masked.parts:
        if part is None:
            out.extend(fills.get(blank, []))
            blank += 1
        else:
            out.append(part)
    return " ".join(out)


@dataclass(frozen=True)
class LlmUsage:
    """What an API instance has spent so far.

    Attributes:
        requests: chats sent to the backend.
        prompt_tokens: prompt tokens, as the backend counted them.
        generated_tokens: tokens generated.
    """

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0


def _check_int(name: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class LlmApi:
    """Aug-PE's text API over a chat language model (registered as ``"llm"``).

    Args:
        label_names: the public label set; its names go into the prompts.
        backend: the text generator's registered name: ``transformers`` (default, local
            SmolLM2-135M-Instruct unless ``backend_config.model`` names a folder), ``vllm``,
            or ``openai`` (an OpenAI-compatible server; its key comes from the edge).
        backend_config: the generator's parameters (e.g. ``{batch_size: 8}``, or ``base_url``
            and ``model`` for ``openai``). Never put secrets here: job configs are persisted.
        templates: prompt templates: None (defaults), a YAML file path, or a mapping of inline
            strings; see :func:`load_templates`.
        descriptions: per label, how every prompt names it (the {label} placeholder), e.g.
            ``{computers: "jokes and quotations about computers"}``; a label without one is
            named by itself. Every key must be a label of ``label_names``.
        topics: per label, keywords or subcategories one of which each random prompt draws
            (Aug-PE's diversity fills); a label without a list uses its own name. Every key
            must be a label of ``label_names``.
        styles: writing styles one of which each random prompt draws.
        random_words: inclusive range of the length, in words, a random prompt asks for.
        max_words: the longest length any prompt asks for.
        length_spread: a variation asks for ``round(n * U(1 - s, 1 + s))`` words, where n is
            the source's word count (clipped to [1, max_words]).
        tokens_per_word: turns an asked length into ``max_new_tokens`` (plus
            :data:`PREAMBLE_TOKENS` for a chat preamble).
        max_new_tokens: the most tokens one request may generate.
        temperature: sampling temperature (0: greedy) of random prompts and fill-ins; a
            paraphrase samples at :func:`paraphrase_temperature` of it.
        top_p: nucleus sampling mass.
        paraphrase_above: degrees above this paraphrase; degrees up to it fill in blanks
            (default 0: every variation is a paraphrase).
        empty_retries: how often a prompt whose cleaned answer is empty, or a paraphrase
            whose answer has its source's words, is asked again (with a new seed). A random
            prompt still empty then fails the call; a variation still empty or unchanged keeps
            its source text (``llm_op`` "fallback").
        max_requests: cap on the requests this API instance sends (None: no cap).
        max_generated_tokens: cap on the tokens it generates; each call reserves its requests'
            full ``max_new_tokens`` before it starts, so the cap is never passed (None: no
            cap).

    Raises:
        ValueError: a number is out of range.
        PromptTemplateError: the templates are invalid.
        PrivevoError: ``topics`` or ``descriptions`` names labels outside ``label_names``, or
            gives a label an empty list or text.
        UnknownNameError: ``backend`` is not registered.

    The caps count per instance: the CLI builds one per run, and a worker, which keeps the
    instance (and its model) loaded across jobs, runs each job on :meth:`for_new_job`'s copy.
    """

    modality: ClassVar[Modality] = "text"
    uses_accelerator: ClassVar[bool] = True
    default_degree_end: ClassVar[float] = 0.2
    default_threshold_sigmas: ClassVar[float] = 2.0
    public_data: ClassVar[str] = (
        "the language model's own training data (SmolLM2's corpus by default, or the chosen "
        "model's), and the prompt templates, label descriptions, topics and styles in "
        "api_config"
    )

    def __init__(
        self,
        label_names: Sequence[str],
        backend: str = "transformers",
        backend_config: Mapping[str, Any] | None = None,
        templates: str | Path | Mapping[str, Any] | None = None,
        descriptions: Mapping[str, str] | None = None,
        topics: Mapping[str, Sequence[str]] | None = None,
        styles: Sequence[str] = DEFAULT_STYLES,
        random_words: Sequence[int] = (20, 60),
        max_words: int = 200,
        length_spread: float = 0.2,
        tokens_per_word: float = 1.5,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 0.95,
        paraphrase_above: float = 0.0,
        empty_retries: int = 2,
        max_requests: int | None = None,
        max_generated_tokens: int | None = None,
    ) -> None:
        self.label_names = tuple(label_names)
        if not self.label_names:
            raise ValueError("label_names must not be empty")
        if len(random_words) != 2 or not 1 <= random_words[0] <= random_words[1]:
            raise ValueError(
                f"random_words must be [min, max] with 1 <= min <= max, got {list(random_words)}"
            )
        _check_int("max_words", max_words)
        _check_int("max_new_tokens", max_new_tokens)
        _check_int("empty_retries", empty_retries, minimum=0)
        _check_int("max_requests", max_requests, optional=True)
        _check_int("max_generated_tokens", max_generated_tokens, optional=True)
        if not 0 <= length_spread < 1:
            raise ValueError(f"length_spread must lie in [0, 1), got {length_spread}")
        if not tokens_per_word > 0:
            raise ValueError(f"tokens_per_word must be positive, got {tokens_per_word}")
        if not temperature >= 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}"
            )
        if not 0 <= paraphrase_above <= 1:
            raise ValueError(f"paraphrase_above must lie in [0, 1], got {paraphrase_above}")
        if isinstance(styles, str) or not styles or not all(isinstance(s, str) for s in styles):
            raise ValueError("styles must be a non-empty list of strings")
        self.templates = load_templates(templates)
        self.topics = self._check_topics(topics or {})
        self.descriptions = self._check_descriptions(descriptions or {})
        self.styles = tuple(styles)
        self.random_words = (int(random_words[0]), int(random_words[1]))
        self.max_words = max_words
        self.length_spread = float(length_spread)
        self.tokens_per_word = float(tokens_per_word)
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.paraphrase_above = float(paraphrase_above)
        self.empty_retries = empty_retries
        self.max_requests = max_requests
        self.max_generated_tokens = max_generated_tokens
        self.generator: TextGenerator = create_generator(backend, **dict(backend_config or {}))
        self.usage = LlmUsage()

    def for_new_job(self) -> LlmApi:
        """A copy sharing the loaded generator whose caps count from zero (a worker's next job)."""
        fresh = copy.copy(self)
        fresh.usage = LlmUsage()
        return fresh

    def _check_labels(self, setting: str, keys: Sequence[Any]) -> None:
        unknown = sorted(str(k) for k in keys if k not in self.label_names)
        if unknown:
            raise PrivevoError(
                f"{setting} names labels {unknown} that are not in the label set "
                f"{list(self.label_names)}; fix the spelling or remove them"
            )

    def _check_descriptions(self, descriptions: Mapping[str, str]) -> dict[str, str]:
        self._check_labels("descriptions", list(descriptions))
        for label, text in descriptions.items():
            if not isinstance(text, str) or not text.strip():
                raise PrivevoError(f"descriptions.{label} must be a non-empty string")
        return dict(descriptions)

    def _named(self, label: int) -> str:
        """What the prompts call a label: its description, or its name."""
        name = self.label_names[label]
        return self.descriptions.get(name, name)

    def _check_topics(self, topics: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
        self._check_labels("topics", list(topics))
        checked = {}
        for label, words in topics.items():
            if isinstance(words, str) or not words or not all(isinstance(w, str) for w in words):
                raise PrivevoError(f"topics.{label} must be a non-empty list of strings")
            checked[label] = tuple(words)
        return checked

    def _chat(self, prompt: str) -> Chat:
        system = self.templates.system
        user = ChatMessage("user", prompt)
        return (ChatMessage("system", system), user) if system else (user,)

    def _limit(self, words: int) -> int:
        return min(self.max_new_tokens, math.ceil(words * self.tokens_per_word) + PREAMBLE_TOKENS)

    def _reserve(self, requests: int, tokens: int) -> None:
        """Fails before a call that could take the instance past a cap."""
        used = self.usage
        for cap, setting, spent, needed, unit in [
            (self.max_requests, "max_requests", used.requests, requests, "requests"),
            (
                self.max_generated_tokens,
                "max_generated_tokens",
                used.generated_tokens,
                tokens,
                "generated tokens",
            ),
        ]:
            if cap is not None and spent + needed > cap:
                raise GenerationCapError(
                    f"the llm API's cap of {cap} {unit} (api_config.{setting}) would be passed: "
                    f"{spent} spent, this call needs up to {needed} more; raise {setting} or ask "
                    "for fewer generations (num_samples, folds, iterations)"
                )

    def _complete(
        self,
        prompts: Sequence[str],
        words: Sequence[int],
        rng: np.random.Generator,
        temperature: float,
    ) -> list[str]:
        """Sends the prompts as one backend call and returns the cleaned answers."""
        if not prompts:
            return []
        limits = [self._limit(w) for w in words]
        self._reserve(len(prompts), sum(limits))
        seeds = rng.integers(0, 2**31, size=len(prompts)).tolist()
        completions = self.generator.generate(
            [self._chat(p) for p in prompts],
            max_new_tokens=limits,
            temperature=temperature,
            top_p=self.top_p,
            seeds=seeds,
        )
        if len(completions) != len(prompts):
            raise GenerationError(
                f"the text generator returned {len(completions)} answers for {len(prompts)} prompts"
            )
        self.usage = LlmUsage(
            requests=self.usage.requests + len(prompts),
            prompt_tokens=self.usage.prompt_tokens + sum(c.prompt_tokens for c in completions),
            generated_tokens=self.usage.generated_tokens
            + sum(c.completion_tokens for c in completions),
        )
        return [clean_output(c.text) for c in completions]

    def _complete_retrying(
        self,
        prompts: Sequence[str],
        words: Sequence[int],
        rng: np.random.Generator,
        temperature: float,
        sources: Sequence[str | None] | None = None,
    ) -> list[str]:
        """:meth:`_complete`, asking again (new seeds) for answers that came back empty or, where
        ``sources`` gives the prompt's source text, with that text's words; "" for an answer
        still so after ``empty_retries``."""
        sources = sources or [None] * len(prompts)

        def failed(i: int, text: str) -> bool:
            source = sources[i]
            return not text or (source is not None and _same_words(text, source))

        texts = self._complete(prompts, words, rng, temperature)
        for _ in range(self.empty_retries):
            redo = [i for i, text in enumerate(texts) if failed(i, text)]
            if not redo:
                break
            again = self._complete(
                [prompts[i] for i in redo], [words[i] for i in redo], rng, temperature
            )
            for i, text in zip(redo, again, strict=True):
                texts[i] = text
        return ["" if failed(i, text) else text for i, text in enumerate(texts)]

    def _samples(
        self, labels: NDArray[np.int64], texts: list[str], ops: list[str], rng: np.random.Generator
    ) -> Samples:
        return Samples(
            ids=new_ids(rng, len(texts)),
            labels=labels,
            label_names=self.label_names,
            texts=tuple(texts),
            params={OP_PARAM: np.array(ops, dtype=np.str_).reshape(len(ops))},
        )

    def random_prompts(
        self, label: int, n: int, rng: np.random.Generator
    ) -> tuple[list[str], list[int]]:
        """n label-conditioned prompts with random topic, style and length fills, and the
        length in words each asks for."""
        name = self.label_names[label]
        topics = self.topics.get(name, (name,))
        prompts, lengths = [], []
        for _ in range(n):
            words = int(rng.integers(self.random_words[0], self.random_words[1] + 1))
            fills = {
                "label": self._named(label),
                "topic": topics[int(rng.integers(len(topics)))],
                "style": self.styles[int(rng.integers(len(self.styles)))],
                "words": words,
            }
            prompts.append(self.templates.random.format_map(fills))
            lengths.append(words)
        return prompts, lengths

    def random(self, label: int, n: int, rng: np.random.Generator) -> Samples:
        """Generates n texts of ``label`` from random prompts (Aug-PE's random API).

        Prompts whose cleaned answer is empty are asked again with new seeds, up to
        ``empty_retries`` times; answers still empty then fail the call.

        Raises:
            GenerationError: some answers were still empty after the retries.
            GenerationCapError: a cap would be passed.
        """
        if not 0 <= label < len(self.label_names):
            raise ValueError(f"label must lie in [0, {len(self.label_names)}), got {label}")
        prompts, words = self.random_prompts(label, n, rng)
        texts = self._complete_retrying(prompts, words, rng, self.temperature)
        empty_count = sum(not text for text in texts)
        if empty_count:
            raise GenerationError(
                f"{empty_count} of {n} random prompts for label {self.label_names[label]!r} got "
                f"empty answers after {self.empty_retries} retries; check the random template "
                "and raise max_new_tokens or empty_retries"
            )
        return self._samples(np.full(n, label, dtype=np.int64), texts, ["random"] * n, rng)

    def variation_prompts(
        self, samples: Samples, degree: float, rng: np.random.Generator
    ) -> tuple[list[str | None], list[MaskedText | None], list[int]]:
        """The prompt, masked text (for fill-ins) and asked length of each sample's variation.

        A sample kept as it is (degree 0, or an empty text) gets the prompt None.
        """
        assert samples.texts is not None
        paraphrase = degree > self.paraphrase_above
        prompts: list[str | None] = []
        masks: list[MaskedText | None] = []
        lengths: list[int] = []
        for label, text in zip(samples.labels.tolist(), samples.texts, strict=True):
            source = text.split()
            if degree == 0 or not source:
                prompts.append(None)
                masks.append(None)
                lengths.append(0)
                continue
            spread = rng.uniform(1 - self.length_spread, 1 + self.length_spread)
            words = int(np.clip(round(len(source) * spread), 1, self.max_words))
            fills = {"label": self._named(label), "words": words}
            if paraphrase:
                masks.append(None)
                prompts.append(self.templates.paraphrase.format_map({**fills, "text": text}))
            else:
                masked = mask_words(source, degree, rng)
                masks.append(masked)
                prompts.append(
                    self.templates.blanks.format_map({**fills, "text": masked.prompt_text()})
                )
                # The answer repeats the whole text, so its limit covers the source too.
                words = max(words, len(source))
            lengths.append(words)
        return prompts, masks, lengths

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        """Rewrites each text with a strength that follows ``degree`` (Aug-PE's variation API).

        Degree 0 keeps every text (no request). Above ``paraphrase_above`` the model
        paraphrases at :func:`paraphrase_temperature`; up to it a share ``degree`` of the words
        is masked and the model fills the blanks (:func:`fill_blanks` keeps the other words).
        A paraphrase that gives its source's words back is asked again, as is an empty
        answer; one still so after ``empty_retries`` retries keeps the source text.

        Args:
            samples: texts (any source: the llm API keeps no per-sample state it needs).
            degree: strength in [0, 1].
            rng: source of all randomness, including the backend's seeds.

        Returns:
            One variation per sample, same order and labels, new ids.
        """
        check_variation_input("llm", samples, degree, self.label_names, [])
        if samples.texts is None:
            raise ValueError("the llm API varies texts, but got image samples")
        prompts, masks, lengths = self.variation_prompts(samples, degree, rng)
        asked = [(i, prompt) for i, prompt in enumerate(prompts) if prompt is not None]
        paraphrase = degree > self.paraphrase_above
        answers = self._complete_retrying(
            [p for _, p in asked],
            [lengths[i] for i, _ in asked],
            rng,
            paraphrase_temperature(self.temperature, degree) if paraphrase else self.temperature,
            # A paraphrase must change its source's words; a fill-in may keep them all.
            [samples.texts[i] for i, _ in asked] if paraphrase else None,
        )
        texts = list(samples.texts)
        ops = ["copy"] * len(texts)
        for (i, _), answer in zip(asked, answers, strict=True):
            masked = masks[i]
            if not answer:
                ops[i] = "fallback"
            elif masked is None:
                texts[i], ops[i] = answer, "paraphrase"
            else:
                texts[i], ops[i] = fill_blanks(masked, answer), "blanks"
        return self._samples(samples.labels, texts, ops, rng)
