"""The shipped job configs (configs/*.yaml) are valid runs: every key known, every plug-in and
its parameters registered, so a README command that names one does not fail on its config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pe_core.apis import API_REGISTRY
from pe_core.embedders import EMBEDDER_REGISTRY
from privevo.local import RunSpec

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_the_configs_are_found() -> None:
    assert {"demo-mnist.yaml", "mnist-drawtext.yaml"} <= {path.name for path in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_a_shipped_config_is_a_valid_run(path: Path) -> None:
    spec = RunSpec.model_validate(yaml.safe_load(path.read_text("utf-8")))
    API_REGISTRY.check_config(spec.api, spec.api_config, given={"label_names"})
    EMBEDDER_REGISTRY.check_config(spec.embedding, spec.embedding_config)
