"""A text simulator: label-conditioned sentences from a context-free grammar written in YAML.

Grammar files look like this::

    max_depth: 12                 # optional (default 16): deepest derivation allowed
    start:                        # one start symbol per label name
      sport: SPORT_SENTENCE
      tech: TECH_SENTENCE
    rules:                        # SYMBOL: [alternative, ...]
      SPORT_SENTENCE:
        - "{TEAM} beat {TEAM} in {VENUE}."     # {SYMBOL} expands another rule
        - text: "{GENERIC_SENTENCE}"           # the mapping form carries a weight
          weight: 2                            # relative to the others (default 1)
      TEAM: [Northfield Rovers, Castlebridge]  # plain strings are terminals

Symbol names match ``[A-Za-z_][A-Za-z0-9_]*``; any other use of ``{`` or ``}`` is an error.
Recursion is allowed as long as every symbol has a way to finish within ``max_depth``: while
sampling, a node only picks alternatives that can still finish in the depth left.

A sample keeps its derivation tree in ``params["derivation"]``: a JSON list of the alternative
chosen at each node, in pre-order from the label's start symbol (the grammar determines the
rest). The text is the tree's yield with whitespace tidied and sentence starts capitalised.
Variation is structure-aware, in the spirit of Struct-Bench (arXiv:2509.10696), which describes
datasets by context-free grammars: it re-samples whole subtrees from their symbols and keeps the
rest of the tree, so every variation stays in the grammar's language for its label, and draws
again while it repeats a text that the same call has made.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import yaml
from numpy.typing import NDArray

from pe_core.apis.base import check_variation_input
from pe_core.errors import DataError, PrivevoError
from pe_core.samples import Modality, Samples, new_ids

DEFAULT_MAX_DEPTH = 16
REDRAWS = 16  # draws of a variation that keeps repeating a text (see vary_text)
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r"\{([^{}]*)\}")
_TOP_LEVEL_KEYS = {"start", "rules", "max_depth", "description"}


class GrammarError(DataError):
    """A grammar file is malformed; the message names the file and the faulty entry."""


@dataclass(frozen=True)
class Alternative:
    """One right-hand side: ``literals[0] {refs[0]} literals[1] ... {refs[-1]} literals[-1]``.

    Attributes:
        literals: len(refs) + 1 text pieces around the references.
        refs: referenced symbols, in order.
        weight: relative probability among the symbol's alternatives (> 0).
        height: depth of the shallowest derivation through this alternative (1 = no refs).
    """

    literals: tuple[str, ...]
    refs: tuple[str, ...]
    weight: float
    height: int


@dataclass(frozen=True)
class Grammar:
    """A validated grammar.

    Attributes:
        start: start symbol per label name.
        rules: alternatives per symbol.
        max_depth: no derivation is deeper than this (the root has depth 0).
        source: where it came from, for error messages.
    """

    start: Mapping[str, str]
    rules: Mapping[str, tuple[Alternative, ...]]
    max_depth: int
    source: str


class Node(NamedTuple):
    """A derivation-tree node: ``symbol`` expanded by its alternative ``alt``."""

    symbol: str
    alt: int
    children: tuple[Node, ...]


def _parse_template(text: str, where: str, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    literals, refs, last = [], [], 0
    for match in _REFERENCE.finditer(text):
        name = match.group(1)
        if not _SYMBOL.fullmatch(name):
            raise GrammarError(f"{source}: {where}: {{{name}}} is not a valid symbol reference")
        literals.append(text[last : match.start()])
        refs.append(name)
        last = match.end()
    literals.append(text[last:])
    for piece in literals:
        if "{" in piece or "}" in piece:
            raise GrammarError(
                f"{source}: {where}: unbalanced brace in {text!r} (references look like "
                "{SYMBOL}; literal braces are not supported)"
            )
    return tuple(literals), tuple(refs)


def _parse_alternative(
    raw: Any, where: str, source: str
) -> tuple[tuple[str, ...], tuple[str, ...], float]:
    # YAML reads bare yes/no/on as booleans and 1.10 as 1.1: only strings and integers are
    # taken as they are, so such slips fail loudly instead of changing the text.
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        text, weight = str(raw), 1.0
    elif isinstance(raw, Mapping):
        extra = sorted(set(raw) - {"text", "weight"})
        if extra or "text" not in raw:
            raise GrammarError(
                f"{source}: {where}: an alternative mapping needs 'text' and may have 'weight'"
                + (f"; unknown keys {extra}" if extra else "")
            )
        text, weight = raw["text"], raw.get("weight", 1.0)
        if not isinstance(text, str):
            raise GrammarError(f"{source}: {where}: 'text' must be a string, got {text!r}")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise GrammarError(f"{source}: {where}: weight must be a number, got {weight!r}")
        if not (math.isfinite(weight) and weight > 0):
            raise GrammarError(f"{source}: {where}: weight must be positive, got {weight}")
    else:
        raise GrammarError(
            f"{source}: {where}: an alternative is a string or {{text, weight}}, got {raw!r} "
            "(quote it in YAML)"
        )
    literals, refs = _parse_template(text, where, source)
    return literals, refs, float(weight)


def parse_grammar(data: Any, source: str = "<grammar>", max_depth: int | None = None) -> Grammar:
    """Validates a parsed YAML document and builds a :class:`Grammar`.

    Args:
        data: the document (a mapping with ``start``, ``rules`` and optional ``max_depth``).
        source: a name for error messages, usually the file path.
        max_depth: overrides the document's ``max_depth``.

    Raises:
        GrammarError: the structure is wrong, a reference names an unknown symbol, or a symbol
            cannot finish within ``max_depth``.
    """
    if not isinstance(data, Mapping):
        raise GrammarError(f"{source}: a grammar is a mapping with 'start' and 'rules'")
    extra = sorted(set(data) - _TOP_LEVEL_KEYS)
    if extra:
        raise GrammarError(f"{source}: unknown top-level keys {extra}; allowed: start, rules")
    if max_depth is None:
        max_depth = data.get("max_depth", DEFAULT_MAX_DEPTH)
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise GrammarError(f"{source}: max_depth must be a positive integer, got {max_depth!r}")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, Mapping) or not raw_rules:
        raise GrammarError(f"{source}: 'rules' must be a non-empty mapping SYMBOL: [...]")
    parsed: dict[str, list[tuple[tuple[str, ...], tuple[str, ...], float]]] = {}
    for symbol, alternatives in raw_rules.items():
        if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
            raise GrammarError(f"{source}: rules: {symbol!r} is not a valid symbol name")
        if isinstance(alternatives, str | Mapping) or not isinstance(alternatives, Sequence):
            alternatives = [alternatives]
        if not alternatives:
            raise GrammarError(f"{source}: rules.{symbol}: needs at least one alternative")
        parsed[symbol] = [
            _parse_alternative(raw, f"rules.{symbol}[{i}]", source)
            for i, raw in enumerate(alternatives)
        ]
    for symbol, alternatives in parsed.items():
        for i, (_, refs, _) in enumerate(alternatives):
            for ref in refs:
                if ref not in parsed:
                    hint = difflib.get_close_matches(ref, list(parsed), n=1)
                    raise GrammarError(
                        f"{source}: rules.{symbol}[{i}]: unknown symbol {{{ref}}}"
                        + (f" (did you mean {{{hint[0]}}}?)" if hint else "")
                    )
    heights = _symbol_heights(parsed)
    stuck = sorted(s for s, h in heights.items() if h == math.inf)
    if stuck:
        raise GrammarError(
            f"{source}: symbols {stuck} can never finish: every alternative recurses; give each "
            "a terminating alternative"
        )
    raw_start = data.get("start")
    if not isinstance(raw_start, Mapping) or not raw_start:
        raise GrammarError(f"{source}: 'start' must map each label name to a start symbol")
    start: dict[str, str] = {}
    for label, symbol in raw_start.items():
        if symbol not in parsed:
            raise GrammarError(f"{source}: start.{label}: unknown symbol {symbol!r}")
        if heights[symbol] > max_depth:
            raise GrammarError(
                f"{source}: start.{label}: the shortest derivation of {symbol} needs depth "
                f"{int(heights[symbol])}, more than max_depth {max_depth}"
            )
        start[str(label)] = symbol
    rules = {
        symbol: tuple(
            Alternative(
                literals=literals,
                refs=refs,
                weight=weight,
                height=1 + int(max((heights[r] for r in refs), default=0)),
            )
            for literals, refs, weight in alternatives
        )
        for symbol, alternatives in parsed.items()
    }
    return Grammar(start=start, rules=rules, max_depth=max_depth, source=source)


def _symbol_heights(
    parsed: Mapping[str, Sequence[tuple[tuple[str, ...], tuple[str, ...], float]]],
) -> dict[str, float]:
    """Least fixpoint of height(S) = min over alternatives of 1 + max height(ref)."""
    heights: dict[str, float] = dict.fromkeys(parsed, math.inf)
    changed = True
    while changed:
        changed = False
        for symbol, alternatives in parsed.items():
            best = min(
                1 + max((heights[r] for r in refs), default=0) for _, refs, _ in alternatives
            )
            if best < heights[symbol]:
                heights[symbol], changed = best, True
    return heights


def load_grammar(grammar: str | Path, max_depth: int | None = None) -> Grammar:
    """Loads a grammar from a YAML file, or a bundled one by name (e.g. ``"bbc_news"``).

    Args:
        grammar: a bundled grammar's name or a path to a ``.yaml``/``.yml`` file.
        max_depth: overrides the file's ``max_depth``.

    Raises:
        GrammarError: the file is missing, is not YAML, or fails validation.
    """
    path = Path(grammar)
    if path.suffix not in {".yaml", ".yml"} and path.name == str(grammar):
        bundled = resources.files("pe_core").joinpath("assets", "grammars", f"{grammar}.yaml")
        if not bundled.is_file():
            names = sorted(
                Path(p.name).stem
                for p in resources.files("pe_core").joinpath("assets", "grammars").iterdir()
                if p.name.endswith(".yaml")
            )
            raise GrammarError(f"no bundled grammar {grammar!r}; bundled: {names}")
        document = yaml.safe_load(bundled.read_text("utf-8"))
        return parse_grammar(document, f"bundled:{grammar}", max_depth)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise GrammarError(f"{path}: cannot read grammar file: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GrammarError(f"{path}: not valid YAML: {exc}") from exc
    return parse_grammar(data, str(path), max_depth)


def sample_tree(grammar: Grammar, symbol: str, depth: int, rng: np.random.Generator) -> Node:
    """Samples a derivation of ``symbol`` for a node at ``depth`` (root = 0).

    Only alternatives that can finish within ``grammar.max_depth - depth`` levels are
    eligible; weights are renormalised over them.
    """
    budget = grammar.max_depth - depth
    alternatives = grammar.rules[symbol]
    eligible = [i for i, alt in enumerate(alternatives) if alt.height <= budget]
    weights = np.array([alternatives[i].weight for i in eligible])
    cumulative = np.cumsum(weights)
    pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    alt = eligible[min(pick, len(eligible) - 1)]
    children = tuple(sample_tree(grammar, ref, depth + 1, rng) for ref in alternatives[alt].refs)
    return Node(symbol, alt, children)


def tree_text(grammar: Grammar, node: Node) -> str:
    """The tidied yield of a derivation tree."""
    return tidy(_raw_yield(grammar, node))


def _raw_yield(grammar: Grammar, node: Node) -> str:
    alt = grammar.rules[node.symbol][node.alt]
    parts = [alt.literals[0]]
    for child, literal in zip(node.children, alt.literals[1:], strict=True):
        parts.append(_raw_yield(grammar, child))
        parts.append(literal)
    return "".join(parts)


def tidy(text: str) -> str:
    """Collapses whitespace, drops spaces before punctuation, capitalises sentence starts."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r" ([,.;:!?%)])", r"\1", text)
    text = re.sub(r"\( ", "(", text)
    # A sentence starts the text or follows . ! ? and a space, perhaps behind an opening quote.
    return re.sub(
        r"(^|[.!?] )([\"'(]*)([a-z])",
        lambda m: m.group(1) + m.group(2) + m.group(3).upper(),
        text,
    )


def encode_tree(node: Node) -> str:
    """The JSON list of alternative indices in pre-order."""
    order: list[int] = []
    stack = [node]
    while stack:
        current = stack.pop()
        order.append(current.alt)
        stack.extend(reversed(current.children))
    return json.dumps(order, separators=(",", ":"))


def decode_tree(grammar: Grammar, symbol: str, encoded: str) -> Node:
    """Rebuilds the tree that :func:`encode_tree` wrote, starting at ``symbol``.

    Raises:
        PrivevoError: the encoding does not fit this grammar.
    """
    try:
        order = json.loads(encoded)
    except json.JSONDecodeError as exc:
        raise PrivevoError(f"derivation {encoded!r} is not JSON") from exc
    if not isinstance(order, list) or not all(isinstance(i, int) for i in order):
        raise PrivevoError(f"derivation {encoded!r} is not a list of integers")
    position = 0

    def build(current: str) -> Node:
        nonlocal position
        if position >= len(order):
            raise PrivevoError(f"derivation {encoded!r} is too short for {grammar.source}")
        alt = order[position]
        position += 1
        if not 0 <= alt < len(grammar.rules[current]):
            raise PrivevoError(
                f"derivation {encoded!r} picks alternative {alt} of {current}, which "
                f"{grammar.source} does not have"
            )
        return Node(current, alt, tuple(build(r) for r in grammar.rules[current][alt].refs))

    tree = build(symbol)
    if position != len(order):
        raise PrivevoError(f"derivation {encoded!r} is too long for {grammar.source}")
    return tree


def _subtree_sizes(node: Node, sizes: dict[int, int]) -> int:
    """Fills ``sizes[id(n)]`` with the node count of every subtree; returns the root's."""
    size = 1 + sum(_subtree_sizes(child, sizes) for child in node.children)
    sizes[id(node)] = size
    return size


def vary_tree(grammar: Grammar, tree: Node, degree: float, rng: np.random.Generator) -> Node:
    """Re-samples a degree-dependent share of the tree's subtrees.

    Walking top-down, a node is re-sampled from its symbol (ending the walk below it) with
    probability ``degree ** (1 + s)``, where ``s`` is the share of the tree's nodes in its
    subtree. Small subtrees (single words, phrases) are thus picked with probability about
    ``degree`` and the whole tree with ``degree ** 2``, which keeps small degrees local while
    degree 1 gives a fresh sample; degree 0 changes nothing.
    """
    sizes: dict[int, int] = {}
    total = _subtree_sizes(tree, sizes)

    def walk(node: Node, depth: int) -> Node:
        if rng.random() < degree ** (1 + sizes[id(node)] / total):
            return sample_tree(grammar, node.symbol, depth, rng)
        return Node(node.symbol, node.alt, tuple(walk(c, depth + 1) for c in node.children))

    return walk(tree, 0)


def vary_text(
    grammar: Grammar,
    tree: Node,
    degree: float,
    rng: np.random.Generator,
    taken: set[str],
    tries: int = REDRAWS,
) -> tuple[Node, str]:
    """:func:`vary_tree`, drawn again while its text is in ``taken``, at most ``tries`` times.

    On the BBC News grammar a third of single draws at degree 0.2 give the parent's text back,
    so a parent selected several times yielded its own text several times: BBC runs ended with
    7-16% duplicate texts. :meth:`GrammarApi.variation` passes the texts its call has made so
    far, so one variation of a parent may still be the parent's text, but no second one. A text
    still taken after ``tries`` draws (a label whose language is that small) is returned as it
    is. Degree 0 changes nothing and draws once. The text is added to ``taken``; the tree and
    its text are returned.
    """
    varied, draws = vary_tree(grammar, tree, degree, rng), 1
    text = tree_text(grammar, varied)
    while degree > 0 and draws < tries and text in taken:
        varied, draws = vary_tree(grammar, tree, degree, rng), draws + 1
        text = tree_text(grammar, varied)
    taken.add(text)
    return varied, text


class GrammarApi:
    """Text simulator over a YAML context-free grammar (registered as ``"grammar"``).

    Args:
        label_names: the public label set; each needs a start symbol in the grammar (labels the
            grammar has but this set lacks are ignored).
        grammar: a bundled grammar name (``"bbc_news"``, ``"tiny"``), a path to a YAML file,
            or an already-parsed document.
        max_depth: overrides the grammar's ``max_depth``.

    Raises:
        GrammarError: the grammar is invalid or lacks a start symbol for some label.
    """

    modality: ClassVar[Modality] = "text"
    uses_accelerator: ClassVar[bool] = False
    default_degree_end: ClassVar[float] = 0.2
    default_threshold_sigmas: ClassVar[float] = 2.0
    public_data: ClassVar[str] = "none: a simulator that expands the user's grammar"

    def __init__(
        self,
        label_names: Sequence[str],
        grammar: str | Path | Mapping[str, Any] = "bbc_news",
        max_depth: int | None = None,
    ) -> None:
        self.label_names = tuple(label_names)
        if not self.label_names:
            raise ValueError("label_names must not be empty")
        self.grammar = (
            parse_grammar(grammar, max_depth=max_depth)
            if isinstance(grammar, Mapping)
            else load_grammar(grammar, max_depth)
        )
        missing = [name for name in self.label_names if name not in self.grammar.start]
        if missing:
            raise GrammarError(
                f"{self.grammar.source}: no start symbol for labels {missing}; the grammar's "
                f"start defines {sorted(self.grammar.start)}"
            )

    def _samples(
        self, labels: NDArray[np.int64], trees: list[Node], texts: list[str], ids: NDArray
    ) -> Samples:
        return Samples(
            ids=ids,
            labels=labels,
            label_names=self.label_names,
            texts=tuple(texts),
            params={
                "derivation": np.array([encode_tree(t) for t in trees], dtype=np.str_).reshape(
                    len(trees)
                )
            },
        )

    def random(self, label: int, n: int, rng: np.random.Generator) -> Samples:
        """Samples n derivations from the label's start symbol."""
        if not 0 <= label < len(self.label_names):
            raise ValueError(f"label must lie in [0, {len(self.label_names)}), got {label}")
        symbol = self.grammar.start[self.label_names[label]]
        trees = [sample_tree(self.grammar, symbol, 0, rng) for _ in range(n)]
        texts = [tree_text(self.grammar, tree) for tree in trees]
        return self._samples(np.full(n, label, dtype=np.int64), trees, texts, new_ids(rng, n))

    def variation(self, samples: Samples, degree: float, rng: np.random.Generator) -> Samples:
        """Re-samples subtrees of each derivation, each to a text no other one took (see
        :func:`vary_text`).

        Args:
            samples: texts made by this API (``params["derivation"]`` holds their trees).
            degree: strength in [0, 1]; 0 keeps the texts, 1 re-samples whole texts.
            rng: source of all randomness.

        Returns:
            One variation per sample, same order and labels, new ids.
        """
        check_variation_input("grammar", samples, degree, self.label_names, ["derivation"])
        taken: set[str] = set()
        varied = [
            vary_text(
                self.grammar,
                decode_tree(self.grammar, self.grammar.start[self.label_names[label]], encoded),
                degree,
                rng,
                taken,
            )
            for label, encoded in zip(
                samples.labels.tolist(), samples.params["derivation"].tolist(), strict=True
            )
        ]
        trees = [tree for tree, _ in varied]
        texts = [text for _, text in varied]
        return self._samples(samples.labels, trees, texts, new_ids(rng, len(samples)))
