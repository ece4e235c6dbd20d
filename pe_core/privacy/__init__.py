"""Differential privacy: exact discrete Gaussian noise, PLD accounting, and the release ledger."""

from pe_core.privacy.accounting import (
    ACCOUNTANT,
    MAX_CALIBRATED_SIGMA,
    Calibration,
    DpEvent,
    calibrate_sigma,
    delta_for,
    epsilon_for,
)
from pe_core.privacy.ledger import (
    LEDGER_VERSION,
    CorruptLedgerError,
    DuplicateReleaseError,
    JsonlLedger,
    Ledger,
    LedgerEntry,
    LedgerError,
    ReleaseIntegrityError,
    ReleaseStore,
    release_digest,
)
from pe_core.privacy.noise import (
    MAX_SIGMA,
    NOISE_REGISTRY,
    DiscreteGaussianSampler,
    InsecureSeededSampler,
    NoiseSampler,
    create_noise_sampler,
    register_noise_sampler,
)

__all__ = [
    "ACCOUNTANT",
    "LEDGER_VERSION",
    "MAX_CALIBRATED_SIGMA",
    "MAX_SIGMA",
    "NOISE_REGISTRY",
    "Calibration",
    "CorruptLedgerError",
    "DiscreteGaussianSampler",
    "DpEvent",
    "DuplicateReleaseError",
    "InsecureSeededSampler",
    "JsonlLedger",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "NoiseSampler",
    "ReleaseIntegrityError",
    "ReleaseStore",
    "calibrate_sigma",
    "create_noise_sampler",
    "delta_for",
    "epsilon_for",
    "register_noise_sampler",
    "release_digest",
]
