from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from pe_core.apis import GrammarApi, create_api
from pe_core.apis.base import VariationApi
from pe_core.apis.grammar import (
    GrammarError,
    Node,
    decode_tree,
    encode_tree,
    load_grammar,
    parse_grammar,
    sample_tree,
    tidy,
    tree_text,
    vary_tree,
)
from pe_core.errors import DataError, PrivevoError
from pe_core.samples import Samples
from tests.pe_core.contracts import VariationApiContract

BBC_LABELS = ["business", "entertainment", "politics", "sport", "tech"]
TINY_LABELS = ["positive", "negative"]


def toy(**changes: Any) -> dict[str, Any]:
    """A small valid grammar document; ``changes`` replace top-level keys."""
    document: dict[str, Any] = {
        "start": {"a": "S", "b": "T"},
        "rules": {
            "S": ["{X} and {X}", {"text": "{X}", "weight": 2}],
            "T": ["{Y}"],
            "X": ["one", "two", "three"],
            "Y": ["four", "five"],
        },
    }
    document.update(changes)
    return document


def depth(node: Node) -> int:
    return max((1 + depth(child) for child in node.children), default=0)


class TestTinyGrammarContract(VariationApiContract):
    @classmethod
    def make_api(cls) -> VariationApi:
        return GrammarApi(TINY_LABELS, grammar="tiny")


class TestBbcNewsGrammarContract(VariationApiContract):
    n_distance = 48

    @classmethod
    def make_api(cls) -> VariationApi:
        return GrammarApi(BBC_LABELS, grammar="bbc_news")


def test_registered() -> None:
    api = create_api("grammar", label_names=TINY_LABELS, grammar="tiny")
    assert isinstance(api, GrammarApi)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rules": {"S": ["{X}"], "T": ["t"]}}, r"rules\.S\[0\]: unknown symbol \{X\}"),
        (
            {"rules": {"S": ["{ITEMS}"], "T": ["t"], "ITEM": ["x"]}},
            r"did you mean \{ITEM\}",
        ),
        ({"rules": {"S": ["{S} again"], "T": ["t"]}}, r"\['S'\] can never finish"),
        ({"rules": {"S": [{"text": "s", "weight": 0}], "T": ["t"]}}, "weight must be positive"),
        ({"rules": {"S": [{"text": "s", "weight": "2"}], "T": ["t"]}}, "weight must be a number"),
        ({"rules": {"S": [{"txt": "s"}], "T": ["t"]}}, r"unknown keys \['txt'\]"),
        ({"rules": {"S": [True], "T": ["t"]}}, "quote it in YAML"),
        ({"rules": {"S": ["a {X"], "T": ["t"]}}, "unbalanced brace"),
        ({"rules": {"S": ["{ X }"], "T": ["t"]}}, "not a valid symbol reference"),
        ({"rules": {"S": [], "T": ["t"]}}, "at least one alternative"),
        ({"rules": {"bad-name": ["x"]}}, "not a valid symbol name"),
        ({"rules": {}}, "'rules' must be a non-empty mapping"),
        ({"start": {"a": "NOPE"}}, r"start\.a: unknown symbol 'NOPE'"),
        ({"start": []}, "'start' must map each label"),
        ({"max_depth": 0}, "max_depth must be a positive integer"),
        ({"max_depth": 1}, "needs depth 2, more than max_depth 1"),
        ({"extra": 1}, r"unknown top-level keys \['extra'\]"),
    ],
)
def test_invalid_grammars_are_rejected_with_a_clear_message(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(GrammarError, match=message) as error:
        parse_grammar(toy(**change), source="toy.yaml")
    assert str(error.value).startswith("toy.yaml: ")
    assert isinstance(error.value, DataError)


def test_grammar_files_name_themselves_in_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("start: {a: S}\nrules:\n  S: ['{MISSING}']\n")
    with pytest.raises(GrammarError, match=f"^{broken}: rules.S"):
        load_grammar(broken)
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("start: [unclosed\n")
    with pytest.raises(GrammarError, match="not valid YAML"):
        load_grammar(not_yaml)
    with pytest.raises(GrammarError, match="cannot read grammar file"):
        load_grammar(tmp_path / "absent.yaml")
    with pytest.raises(GrammarError, match=r"no bundled grammar 'nope'; bundled: \[.*'tiny'"):
        load_grammar("nope")


def test_missing_label_start_is_an_error() -> None:
    with pytest.raises(GrammarError, match=r"no start symbol for labels \['c'\]"):
        GrammarApi(["a", "c"], grammar=toy())


def test_grammar_from_a_file_and_extra_start_labels_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("start: {a: S, b: S}\nrules:\n  S: [hello world]\n")
    api = GrammarApi(["a"], grammar=path)
    assert api.random(0, 2, np.random.default_rng(0)).texts == ("Hello world", "Hello world")


def test_recursion_stops_at_max_depth() -> None:
    document = toy(rules={"S": ["{S} {S}", "{S} x", "x"], "T": ["t"]}, max_depth=6)
    grammar = parse_grammar(document)
    rng = np.random.default_rng(1)
    depths = [depth(sample_tree(grammar, "S", 0, rng)) for _ in range(300)]
    # The root has depth 0, so a tree of max_depth levels has edge depth max_depth - 1.
    assert max(depths) == 5
    api = GrammarApi(["a", "b"], grammar=document, max_depth=3)
    assert api.grammar.max_depth == 3
    texts = api.random(0, 200, rng).texts
    assert max(len(t.split()) for t in texts) == 4


def test_weights_set_the_alternative_frequencies() -> None:
    grammar = parse_grammar(toy())
    rng = np.random.default_rng(2)
    trees = [sample_tree(grammar, "S", 0, rng) for _ in range(3000)]
    single = sum(tree.alt == 1 for tree in trees)
    assert stats.binomtest(single, len(trees), 2 / 3).pvalue > 1e-3


def test_derivations_round_trip_and_mismatches_are_rejected() -> None:
    grammar = load_grammar("tiny")
    rng = np.random.default_rng(3)
    for _ in range(50):
        tree = sample_tree(grammar, "POSITIVE", 0, rng)
        assert decode_tree(grammar, "POSITIVE", encode_tree(tree)) == tree
    tree = sample_tree(grammar, "POSITIVE", 0, rng)
    encoded = encode_tree(tree)
    with pytest.raises(PrivevoError, match="too long"):
        decode_tree(grammar, "POSITIVE", encoded[:-1] + ",0,0]")
    with pytest.raises(PrivevoError, match="too short"):
        decode_tree(grammar, "POSITIVE", "[1]")
    with pytest.raises(PrivevoError, match="alternative 9 of POSITIVE"):
        decode_tree(grammar, "POSITIVE", "[9]")
    with pytest.raises(PrivevoError, match="not JSON"):
        decode_tree(grammar, "POSITIVE", "1,2")


def test_variation_stays_in_the_labels_language() -> None:
    api = GrammarApi(TINY_LABELS, grammar="tiny")
    rng = np.random.default_rng(4)
    positive = api.random(0, 100, rng)
    bad_words = {"flimsy", "noisy", "bad", "broken", "overpriced"}
    for degree in (0.3, 1.0):
        varied = api.variation(positive, degree, rng)
        assert varied.texts is not None
        words = [set(text.replace(",", "").rstrip(".").split()) for text in varied.texts]
        assert not any(bad_words & w for w in words)


def test_resampled_share_grows_with_degree() -> None:
    grammar = load_grammar("bbc_news")
    rng = np.random.default_rng(5)
    trees = [sample_tree(grammar, "BUSINESS", 0, rng) for _ in range(300)]

    def changed(degree: float) -> float:
        vary_rng = np.random.default_rng(6)
        return float(np.mean([vary_tree(grammar, t, degree, vary_rng) != t for t in trees]))

    assert changed(0.0) == 0.0
    assert 0.0 < changed(0.05) < changed(0.3) < changed(1.0)
    # Degree 1 re-samples the root, so it is an independent fresh sample from the start symbol.
    fresh_roots = np.array([vary_tree(grammar, t, 1.0, rng).alt for t in trees])
    old_roots = np.array([t.alt for t in trees])
    assert np.mean(fresh_roots == old_roots) < 0.5


def test_variations_of_one_parent_are_distinct_texts() -> None:
    api = GrammarApi(BBC_LABELS, grammar="bbc_news")
    rng = np.random.default_rng(7)
    parent = api.random(0, 1, rng)
    grammar, (encoded,) = api.grammar, parent.params["derivation"].tolist()
    # A single draw at a small degree gives the parent's text back about a third of the time.
    single = [
        tree_text(grammar, vary_tree(grammar, decode_tree(grammar, "BUSINESS", encoded), 0.2, rng))
        for _ in range(200)
    ]
    assert single.count((parent.texts or ())[0]) > 30
    selected = parent.take(np.zeros(50, dtype=np.int64))  # selected 50 times
    varied = api.variation(selected, 0.2, rng).texts or ()
    assert len(set(varied)) == 50
    assert api.variation(selected, 0.0, rng).texts == selected.texts


def test_a_label_with_one_text_is_varied_without_looping() -> None:
    api = GrammarApi(["a", "b"], grammar=toy(rules={"S": ["only"], "T": ["{Y}"], "Y": ["x", "y"]}))
    varied = api.variation(
        api.random(0, 5, np.random.default_rng(8)), 0.5, np.random.default_rng(9)
    )
    assert varied.texts == ("Only",) * 5


def test_texts_are_the_tidied_yield() -> None:
    grammar = parse_grammar(
        toy(rules={"S": ["  {X} ,  said {X} ( today ) ."], "T": ["t"], "X": ["they"]})
    )
    tree = sample_tree(grammar, "S", 0, np.random.default_rng(0))
    assert tree_text(grammar, tree) == "They, said they (today)."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  the  market rose .  shares fell !  why ?", "The market rose. Shares fell! Why?"),
        ("£3m ( about $5m ) , said 7 %", "£3m (about $5m), said 7%"),
        ('"quoted" start. "and" more', '"Quoted" start. "And" more'),
        ("US 2.5% growth. next", "US 2.5% growth. Next"),
    ],
)
def test_tidy(raw: str, expected: str) -> None:
    assert tidy(raw) == expected


def test_variation_needs_a_derivation_column() -> None:
    api = GrammarApi(TINY_LABELS, grammar="tiny")
    foreign = Samples(
        ids=np.array(["x"]), labels=np.array([0]), label_names=tuple(TINY_LABELS), texts=["hi"]
    )
    with pytest.raises(PrivevoError, match="'derivation'"):
        api.variation(foreign, 0.5, np.random.default_rng(0))


class TestBbcNewsAsset:
    @pytest.fixture(scope="class")
    @classmethod
    def api(cls) -> GrammarApi:
        return GrammarApi(BBC_LABELS, grammar="bbc_news")

    def test_both_sport_folder_names_have_a_start(self) -> None:
        grammar = load_grammar("bbc_news")
        assert set(grammar.start) == {*BBC_LABELS, "sports"}
        assert grammar.start["sport"] == grammar.start["sports"]

    def test_texts_are_varied_news_sentences(self, api: GrammarApi) -> None:
        rng = np.random.default_rng(7)
        for label in range(len(BBC_LABELS)):
            texts = api.random(label, 400, rng).texts
            assert texts is not None
            lengths = np.array([len(t.split()) for t in texts])
            assert 15 <= np.median(lengths) <= 30
            assert np.percentile(lengths, 5) >= 12 and np.percentile(lengths, 95) <= 40
            assert len(set(texts)) >= 395
            assert all(t[0].isupper() and t.endswith(".") for t in texts)
            assert not any("{" in t or "  " in t for t in texts)

    def test_about_a_third_of_random_texts_are_on_topic(self) -> None:
        grammar = load_grammar("bbc_news")
        own = {
            "business": "BIZ_SENTENCE",
            "entertainment": "ENT_SENTENCE",
            "politics": "POL_SENTENCE",
            "sport": "SPORT_SENTENCE",
            "tech": "TECH_SENTENCE",
        }
        for label, sentence in own.items():
            alternatives = grammar.rules[grammar.start[label]]
            weights = np.array([alt.weight for alt in alternatives])
            on_topic = np.array([sentence in alt.refs for alt in alternatives])
            share = weights[on_topic].sum() / weights.sum()
            # Enough signal to learn from, enough noise for private selection to improve.
            assert 0.25 <= share <= 0.5, (label, share)
