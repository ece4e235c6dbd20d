import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_yaml_matches_the_app():
    spec = importlib.util.spec_from_file_location(
        "export_openapi", ROOT / "scripts" / "export_openapi.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "openapi.yaml").read_text() == module.render(), (
        "openapi.yaml drifted from the app: run .venv/bin/python scripts/export_openapi.py"
    )
