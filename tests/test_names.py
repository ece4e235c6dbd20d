"""No import name of ours can collide with another distribution's.

A collision is silent and depends on the environment: with transformers 5.25, Hugging Face's
`kernels` became a dependency, and our old top-level `kernels/` shadowed it (from the checkout's
root) or was shadowed by it (from anywhere else). So our names are checked twice: against every
distribution installed here, and against names known to be taken on PyPI.

`service` and `workers` are taken on PyPI too (`service` 0.6.0 and `workers` 0.1 each install a
top-level package of that name). We keep them, as the project's layout names them: nothing we
depend on installs either (the locks say so, and the first test here fails if one ever does),
and nothing imports them but us.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OURS = {
    "pe_core": "privevo",
    "pe_kernels": "privevo",
    "service": "privevo",
    "workers": "privevo",
    "privevo": "privevo",
    "privevo_client": "privevo-client",
}
"""Our top-level import packages and the distribution of ours that installs each."""

TAKEN = {
    "kernels": "Hugging Face's kernels, a dependency of transformers >= 5.25",
    "sdk": "SDK 1.0.0 on PyPI",
    "core": "a common name of third-party top-level packages",
    "engine": "a common name of third-party top-level packages",
    "client": "a common name of third-party top-level packages",
    "api": "a common name of third-party top-level packages",
    "utils": "a common name of third-party top-level packages",
    "src": "what a src layout installed wrongly provides",
}
"""Names known to be taken, which none of ours may use, with who takes them."""

KEPT_THOUGH_TAKEN = {"service": "service 0.6.0 on PyPI", "workers": "workers 0.1 on PyPI"}


def test_no_other_installed_distribution_provides_one_of_our_names() -> None:
    providers = importlib.metadata.packages_distributions()
    clashes = {name: sorted(set(providers.get(name, ())) - {dist}) for name, dist in OURS.items()}
    assert not {name: dists for name, dists in clashes.items() if dists}


def test_none_of_our_names_is_known_to_be_taken() -> None:
    assert not set(OURS) & set(TAKEN)
    assert set(KEPT_THOUGH_TAKEN) <= set(OURS)


def test_the_checked_names_are_all_of_our_packages() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    server = {pattern.removesuffix("*") for pattern in patterns}
    client = {p.name for p in (REPO / "sdk" / "src").iterdir() if (p / "__init__.py").exists()}
    on_disk = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()} - {"tests"}
    assert server == on_disk == {n for n, d in OURS.items() if d == "privevo"}
    assert client == {n for n, d in OURS.items() if d == "privevo-client"}
