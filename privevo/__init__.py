"""privevo: differentially private synthetic data with Private Evolution.

    import privevo
    result = privevo.run("data/mnist/test.npz", "runs/mnist", epsilon=1.0)
    sigma = privevo.calibrate(epsilon=1.0, iterations=4).sigma

The engine loads on the first call (see ``privevo.api``); the CLI is ``privevo.cli``.
"""

from privevo.api import RunResult, calibrate, run

__all__ = ["RunResult", "calibrate", "run"]
