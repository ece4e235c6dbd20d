"""The fused Triton kernel and backend against the float64 reference, ties included.

Runs on CPU under ``TRITON_INTERPRET=1`` in its own pytest process (``make test``:
``TRITON_INTERPRET=1 pytest -m triton_interpret``), or on a CUDA device. Interpreter tiles are
16 x 16 x 16, so the shapes below leave partial tiles in every dimension; keep them small, the
interpreter runs each program as numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import pe_kernels
from pe_core.histogram import prepare_embeddings
from pe_kernels import triton_backend
from pe_kernels.reference import reference_search

pytestmark = pytest.mark.triton_interpret

pytest.importorskip("triton", reason="triton is not installed: pip install 'privevo[triton]'")
from pe_kernels import triton_impl  # noqa: E402

if triton_impl.INTERPRETING:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip(
        "needs TRITON_INTERPRET=1 set before pytest starts (make test runs it) or a CUDA device",
        allow_module_level=True,
    )


def _backend(**config: Any) -> Any:
    return pe_kernels.TritonBackend(device=DEVICE, **config)


def _check(backend: Any, private: np.ndarray, synthetic: np.ndarray, ks: tuple[int, ...]) -> None:
    for k in ks:
        expected = reference_search(private, synthetic, k)
        np.testing.assert_array_equal(backend.search(private, synthetic, k), expected, f"k={k}")
        votes = pe_kernels.vote_histogram(backend, private, synthetic, k)
        assert votes.dtype == np.int64
        np.testing.assert_array_equal(
            votes, np.bincount(expected[expected >= 0], minlength=len(synthetic)), f"k={k}"
        )


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize(("n", "m", "dim"), [(37, 41, 33), (17, 2, 5), (16, 16, 16), (3, 5, 1)])
def test_matches_reference_on_awkward_shapes(metric: str, n: int, m: int, dim: int) -> None:
    rng = np.random.default_rng(n * 100 + m + dim)
    private = prepare_embeddings(rng.standard_normal((n, dim)), metric)
    synthetic = prepare_embeddings(rng.standard_normal((m, dim)), metric)
    _check(_backend(), private, synthetic, (1, 3) if m > 2 else (1,))


def test_one_synthetic_row_and_k_beyond_m() -> None:
    rng = np.random.default_rng(0)
    private = rng.standard_normal((9, 7)).astype(np.float32)
    _check(_backend(), private, rng.standard_normal((1, 7)).astype(np.float32), (1, 2))
    _check(_backend(), private, rng.standard_normal((3, 7)).astype(np.float32), (3, 5))


def test_no_private_rows() -> None:
    backend = _backend()
    synthetic = np.ones((4, 3), np.float32)
    assert backend.search(np.zeros((0, 3), np.float32), synthetic, 2).shape == (0, 2)
    np.testing.assert_array_equal(
        pe_kernels.vote_histogram(backend, np.zeros((0, 3), np.float32), synthetic, 2), [0, 0, 0, 0]
    )


def test_exact_duplicates_lowest_index_wins() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((12, 17)).astype(np.float32)
    # Resampling with replacement: most rows appear several times, in shuffled order.
    synthetic = base[rng.integers(0, 12, size=40)]
    private = np.concatenate([base, rng.standard_normal((8, 17)).astype(np.float32)])
    _check(_backend(), private, synthetic, (1, 2, 4))


def _spy_exact_pass(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the row count of every call of the exact GEMM pass for cut-short rows."""
    calls: list[int] = []
    original = triton_backend.blocked_search

    def spy(private: np.ndarray, *args: Any) -> Any:
        calls.append(len(private))
        return original(private, *args)

    monkeypatch.setattr(triton_backend, "blocked_search", spy)
    return calls


def test_ties_beyond_the_shortlist_go_to_the_exact_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    dim = 9
    calls = _spy_exact_pass(monkeypatch)
    # The origin ties with all 18 points +-e_j, far more than a shortlist of k + 3.
    synthetic = np.concatenate([np.eye(dim), -np.eye(dim)]).astype(np.float32)[::-1].copy()
    private = np.concatenate([np.zeros((1, dim)), 3 * np.eye(dim)]).astype(np.float32)
    _check(_backend(), private, synthetic, (1, 2))
    # search and votes at k 1: only the origin's row is cut short; at k 2 every row is, since
    # the second nearest of 3 e_j ties among the 16 points +-e_i (i != j).
    assert calls == [1, 1, 10, 10]


def test_exact_pass_refuses_reduced_precision_matmul() -> None:
    # The cut-short rows' GEMM must be IEEE fp32, or its error bound does not hold.
    setting = torch.backends.cuda.matmul if DEVICE == "cuda" else torch.backends.mkldnn.matmul
    synthetic = np.concatenate([np.eye(9), -np.eye(9)]).astype(np.float32)
    private = np.zeros((1, 9), np.float32)  # ties with all 18 rows: cut short
    previous = setting.fp32_precision
    setting.fp32_precision = "tf32" if DEVICE == "cuda" else "bf16"
    try:
        with pytest.raises(RuntimeError, match="IEEE fp32"):
            _backend().search(private, synthetic, 1)
    finally:
        setting.fp32_precision = previous
    _check(_backend(), private, synthetic, (1,))


@pytest.mark.parametrize("precision", ["float32", "bfloat16x3"])
@pytest.mark.parametrize("role", ["private", "synthetic"])
def test_votes_refuse_nan_and_infinities(precision: str, role: str) -> None:
    # vote_histogram leaves the value check to the backend, which reads it from the norms.
    rng = np.random.default_rng(5)
    arrays = {
        "private": rng.standard_normal((40, 6)).astype(np.float32),
        "synthetic": rng.standard_normal((9, 6)).astype(np.float32),
    }
    backend = _backend(precision=precision, max_block_bytes=4096)
    for bad in (np.nan, np.inf, -np.inf):
        # In the last row: with small blocks, earlier blocks have voted by then.
        spoilt = dict(arrays)
        spoilt[role] = arrays[role].copy()
        spoilt[role][-1, 2] = bad
        with pytest.raises(ValueError, match=f"{role} embeddings contain NaN"):
            pe_kernels.vote_histogram(backend, spoilt["private"], spoilt["synthetic"], 2)


@pytest.mark.parametrize("max_block_bytes", [1, 4096])
def test_small_blocks_of_private_rows(max_block_bytes: int) -> None:
    # 1 byte: one private row per launch; 4096 bytes: a few rows per launch.
    rng = np.random.default_rng(2)
    private = rng.standard_normal((13 if max_block_bytes > 1 else 4, 18)).astype(np.float32)
    synthetic = rng.standard_normal((19, 18)).astype(np.float32)
    synthetic[3] = synthetic[11]
    private[1] = synthetic[11]
    _check(_backend(max_block_bytes=max_block_bytes), private, synthetic, (1, 2))


# Spacing of a cluster of near-ties: inside the low-precision pass's window, outside fp32's.
_NEAR_TIE_SPACING = {"bfloat16": 1e-3, "float16": 1e-3, "bfloat16x3": 1e-5}


@pytest.mark.parametrize("precision", sorted(_NEAR_TIE_SPACING))
def test_low_precision_matches_reference(precision: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dtypes: list[Any] = []
    columns: list[int] = []
    original = triton_impl.shortlists

    def spy(x: Any, *args: Any) -> Any:
        dtypes.append(x.dtype)
        columns.append(x.shape[1])
        return original(x, *args)

    monkeypatch.setattr(triton_impl, "shortlists", spy)
    exact_pass = _spy_exact_pass(monkeypatch)
    rng = np.random.default_rng(3)
    private = prepare_embeddings(rng.standard_normal((33, 40)), "cosine")
    synthetic = prepare_embeddings(rng.standard_normal((35, 40)), "cosine")
    synthetic[7] = synthetic[30]
    private[0] = synthetic[30]
    # Eight points at nearly equal distances from the origin: one cluster of near-ties for the
    # low-precision pass, well apart for the fp32 one.
    private[1] = 0.0
    synthetic[rng.permutation(8) + 10] = np.eye(40, dtype=np.float32)[0] * (
        1 + _NEAR_TIE_SPACING[precision] * np.arange(8, dtype=np.float32)[:, None]
    )
    _check(_backend(precision=precision), private, synthetic, (1, 2))
    # One kernel pass at the rounded precision; its window holds the whole cluster of near-ties,
    # more than the shortlist, so that row takes the exact pass.
    expected = torch.bfloat16 if precision == "bfloat16x3" else getattr(torch, precision)
    assert set(dtypes) == {expected}
    assert set(columns) == {3 * 40 if precision == "bfloat16x3" else 40}  # x_hi | x_hi | x_lo
    assert exact_pass and min(exact_pass) >= 1


@pytest.mark.parametrize("precision", ["float32", "bfloat16x3"])
def test_well_separated_rows_all_vote_on_the_device(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(4)
    synthetic = rng.standard_normal((40, 20)).astype(np.float32)
    private = synthetic[rng.integers(0, 40, size=30)] + np.float32(1e-3)
    on_host: list[int] = []
    original = triton_backend._rerank_shortlists

    def spy(rows: np.ndarray, *args: Any) -> Any:
        on_host.append(len(rows))
        return original(rows, *args)

    monkeypatch.setattr(triton_backend, "_rerank_shortlists", spy)
    exact_pass = _spy_exact_pass(monkeypatch)
    _check(_backend(precision=precision), private, synthetic, (1,))
    # search() ranks every row on the host; votes() sent none there, nor to the exact pass.
    assert on_host == [30]
    assert exact_pass == []


@pytest.mark.parametrize("k", [1, 2, 4])
def test_kernel_shortlist_is_sorted_with_lowest_index_ties(k: int) -> None:
    rng = np.random.default_rng(k)
    # Quarter-integers: every fp32 product and sum here is exact, so values must match exactly,
    # and the coarse grid makes many exact ties.
    private = (rng.integers(-2, 3, size=(19, 5)) / 4).astype(np.float32)
    synthetic = (rng.integers(-2, 3, size=(37, 5)) / 4).astype(np.float32)
    # More exact copies of one point than the shortlist holds, within one tile and across two.
    synthetic[[3, 4, 6, 9, 11, 12, 14, 17, 20]] = private[0]
    shortlist = k + 3
    window = np.full(len(private), 0.1, np.float32)
    counts = torch.zeros(len(synthetic), dtype=torch.int32, device=DEVICE)
    values, indices, settled = triton_impl.shortlists(
        torch.from_numpy(private).to(DEVICE),
        torch.from_numpy(synthetic).to(DEVICE),
        torch.from_numpy((synthetic.astype(np.float64) ** 2).sum(1).astype(np.float32)).to(DEVICE),
        torch.from_numpy(window).to(DEVICE),
        k,
        shortlist,
        counts,
        triton_impl.INTERPRETER_TILES,
    )
    shifted = (synthetic.astype(np.float64) ** 2).sum(1)[None, :] - 2.0 * (
        private.astype(np.float64) @ synthetic.astype(np.float64).T
    )
    order = np.argsort(shifted, axis=1, kind="stable")[:, :shortlist]
    np.testing.assert_array_equal(indices.cpu().numpy(), order)
    np.testing.assert_array_equal(values.cpu().numpy(), np.take_along_axis(shifted, order, axis=1))
    gaps = np.take_along_axis(shifted, order[:, k : k + 1], 1) - np.take_along_axis(
        shifted, order[:, k - 1 : k], 1
    )
    expected_settled = gaps[:, 0] > 0.1
    np.testing.assert_array_equal(settled.cpu().numpy(), expected_settled)
    votes = np.bincount(order[expected_settled, :k].ravel(), minlength=len(synthetic))
    np.testing.assert_array_equal(counts.cpu().numpy(), votes)


def test_float16_refuses_values_beyond_its_range() -> None:
    big = np.full((2, 3), 7e4, np.float32)
    with pytest.raises(ValueError, match="float16 range"):
        _backend(precision="float16").search(big, np.zeros((4, 3), np.float32), 1)


def test_unknown_precision_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="bfloat16"):
        _backend(precision="tf32")


def test_tiles_must_suit_tl_dot() -> None:
    with pytest.raises(ValueError, match="power of two >= 16"):
        triton_impl.Tiles(16, 8, 16)
    with pytest.raises(ValueError, match="power of two >= 16"):
        triton_impl.Tiles(48, 16, 16)


def test_kernel_refuses_a_shortlist_not_above_k() -> None:
    one = torch.zeros((2, 16), device=DEVICE)
    with pytest.raises(ValueError, match="k < shortlist"):
        triton_impl.shortlists(
            one, one, one[:, 0], one[:, 0], 2, 2, None, triton_impl.INTERPRETER_TILES
        )


def test_kernel_refuses_mixed_input_dtypes() -> None:
    one = torch.zeros((2, 16), device=DEVICE)
    with pytest.raises(TypeError, match="share a dtype"):
        triton_impl.shortlists(
            one, one.bfloat16(), one[:, 0], one[:, 0], 1, 2, None, triton_impl.INTERPRETER_TILES
        )
