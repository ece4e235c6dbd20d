"""pe_core stays a pure library: no web, queue, environment, network, clock or global RNG."""

import ast
import re
from pathlib import Path

import pytest

PE_CORE = Path(__file__).resolve().parents[2] / "pe_core"
FORBIDDEN_MODULES = {
    "fastapi",
    "celery",
    "redis",
    "sqlalchemy",
    "boto3",
    "requests",
    "httpx",
    "socket",
    "urllib",
    "service",
    "workers",
    "privevo",
    "time",
    "datetime",
}
# The one module of pe_core that talks to a server: the llm API's OpenAI-compatible backend,
# which needs an HTTP client and a clock for its timeouts and retries (it still reads no
# setting: each edge passes it the key and the allowed server).
NETWORK_CLIENT = {Path("apis/llm_backends/openai_backend.py"): {"httpx", "time", "datetime"}}
FORBIDDEN_TEXT = {
    "environment access": re.compile(r"\bos\.(environ|getenv|putenv)\b"),
    "global numpy RNG": re.compile(
        r"np\.random\.(?!default_rng\b|Generator\b|SeedSequence\b|PCG64\b)\w+\("
    ),
    "global stdlib RNG": re.compile(r"(?<![\w.])random\.(random|choice|gauss|shuffle|seed)\("),
}


def _sources():
    return sorted(PE_CORE.rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PE_CORE)))
def test_module_is_pure(path):
    text = path.read_text()
    allowed = NETWORK_CLIENT.get(path.relative_to(PE_CORE), set())
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top not in FORBIDDEN_MODULES - allowed, f"{path}: imports {name}"
    for what, pattern in FORBIDDEN_TEXT.items():
        assert not pattern.search(text), f"{path}: {what}"


def test_scan_sees_the_package():
    assert len(_sources()) > 10
    assert all((PE_CORE / path).is_file() for path in NETWORK_CLIENT)
