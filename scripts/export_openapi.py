"""Writes openapi.yaml at the repository root from the FastAPI app (a test fails on drift).

.venv/bin/python scripts/export_openapi.py [--check]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

from service.app import create_app
from service.settings import Settings

TARGET = Path(__file__).resolve().parents[1] / "openapi.yaml"


def render() -> str:
    with tempfile.TemporaryDirectory() as home:
        # The spec does not depend on settings; nothing is enqueued while rendering it.
        app = create_app(Settings(home=Path(home)), enqueue=lambda job_id, spec: None)
        return yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if openapi.yaml is stale")
    args = parser.parse_args()
    spec = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != spec:
            print("openapi.yaml is stale: run scripts/export_openapi.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(spec)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
