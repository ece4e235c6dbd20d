"""The README's audit table: `privevo audit` on the MNIST stand-in at eps 1, 4 and 10, without
noise, and with the injected bug (noise at sigma / 4, NOT PRIVATE); one black-box row.

Each row is one audit of the drawtext MNIST job (configs/mnist-drawtext.yaml: T 4, 2,000
samples, lookahead 8, delta 1e-6) with m 2,000 canaries and r 200 guesses, through the same
path as the command (``privevo.audit.audit_local``), with OS-entropy noise. Needs `make data`
first.

    .venv/bin/python benchmarks/audit.py [--canary-seed 1] [--seed 7]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pe_core.audit import AuditPlan
from pe_core.policy import PrivacyPolicy
from privevo.audit import audit_local
from privevo.local import RunSpec

ROWS: list[tuple[str, dict[str, Any], str, float | None]] = [
    ("eps 1", {"epsilon": 1.0}, "white-box", None),
    ("eps 4", {"epsilon": 4.0}, "white-box", None),
    ("eps 10", {"epsilon": 10.0}, "white-box", None),
    ("no privacy", {"no_privacy": True, "epsilon": math.inf}, "white-box", None),
    ("eps 1, bug: sigma / 4 (NOT PRIVATE)", {"epsilon": 1.0}, "white-box", 4.0),
    ("no privacy, black-box", {"no_privacy": True, "epsilon": math.inf}, "black-box", None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/mnist-drawtext.yaml"))
    parser.add_argument("--canary-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7, help="seed of the runs' generation")
    args = parser.parse_args()
    base = {k: v for k, v in yaml.safe_load(args.config.read_text()).items() if k != "eval_data"}
    print("| run | claimed eps | bound (95%) | correct of r | p at the claim | wall |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        for i, (name, changes, mode, divisor) in enumerate(ROWS):
            spec = RunSpec.model_validate(
                {**base, **changes, "seed": args.seed, "out": Path(scratch) / str(i)}
            )
            plan = AuditPlan(mode=mode, seed=args.canary_seed)  # type: ignore[arg-type]
            report = audit_local(
                spec, plan, policy=PrivacyPolicy(), sigma_divisor=divisor, progress=False
            )
            claimed = report["claimed_epsilon"]
            p = report["p_value_at_claim"]
            print(
                f"| {name} | {'none' if claimed is None else f'{claimed:.3f}'} "
                f"| {report['epsilon_lower_bound']:.2f} "
                f"| {report['guesses']['correct']} of {report['r']} "
                f"| {'-' if p is None else f'{p:.2g}'} | {report['wall_s']:.0f} s |",
                flush=True,
            )


if __name__ == "__main__":
    main()
