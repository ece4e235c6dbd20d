"""The Triton kernel compiles for a Hopper GPU without one, and the backend refuses plain CPU.

The interpreter tests (``test_triton.py``) check the kernel's arithmetic but not that it lowers
to GPU code: triton compiles to PTX and a cubin for ``sm_90`` on any machine, so this runs in
the main pytest process (not under ``TRITON_INTERPRET=1``, where kernels are not compiled).
"""

from __future__ import annotations

import re

import pytest

triton = pytest.importorskip(
    "triton", reason="triton is not installed: pip install 'privevo[triton]'"
)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import pe_kernels  # noqa: E402
from pe_kernels import triton_impl  # noqa: E402

if triton_impl.INTERPRETING:
    pytest.skip("TRITON_INTERPRET=1 replaces compilation", allow_module_level=True)

_POINTERS = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16"}


def _compile_for_hopper(precision: str, k: int, shortlist: int) -> dict[str, str]:
    tiles = triton_impl.DEFAULT_TILES[precision]
    signature = {
        **dict.fromkeys(("x_ptr", "y_ptr"), _POINTERS[precision]),
        "y_sq_ptr": "*fp32",
        "window_ptr": "*fp32",
        "values_ptr": "*fp32",
        "indices_ptr": "*i32",
        "settled_ptr": "*i8",
        "counts_ptr": "*i32",
        **dict.fromkeys(("n_rows", "n_cols", "dim", "stride_x", "stride_y"), "i32"),
    }
    constants = {
        "K": k,
        "SHORTLIST": shortlist,
        "SLOTS": triton.next_power_of_2(shortlist),
        "VOTE": True,
        "UPCAST": False,
        "BLOCK_M": tiles.block_m,
        "BLOCK_N": tiles.block_n,
        "BLOCK_D": tiles.block_d,
    }
    signature.update(dict.fromkeys(constants, "constexpr"))
    try:
        compiled = triton.compile(
            ASTSource(fn=triton_impl._shortlist_kernel, signature=signature, constexprs=constants),
            target=GPUTarget("cuda", 90, 32),
            options={
                "num_warps": tiles.num_warps,
                "num_stages": tiles.num_stages,
                "enable_fp_fusion": True,
            },
        )
    except RuntimeError as exc:  # pragma: no cover - depends on the wheel's bundled ptxas
        if "ptxas" in str(exc):
            pytest.skip(f"this triton build cannot assemble sm_90 code here: {exc}")
        raise
    return compiled.asm


@pytest.mark.parametrize(
    ("precision", "k", "shortlist"),
    [("float32", 1, 4), ("bfloat16", 3, 6)],
)
def test_kernel_compiles_for_sm90(precision: str, k: int, shortlist: int) -> None:
    asm = _compile_for_hopper(precision, k, shortlist)
    # The error bound counts on each slice's sum starting from zero: triton must not have
    # folded the running sum into the dots' accumulator (tiled_dot_error_bound).
    zeros = set(
        re.findall(r"(%\w+) = arith\.constant dense<0\.000000e\+00> : tensor<\w+xf32>", asm["ttir"])
    )
    accumulators = re.findall(r"tt\.dot %\w+, %\w+, (%\w+)", asm["ttir"])
    assert len(accumulators) == 1
    assert accumulators[0] in zeros
    ptx = asm["ptx"]
    assert asm["cubin"]
    assert "red.global" in ptx or "atom.global" in ptx  # the votes
    if precision == "float32":
        # IEEE fp32 on CUDA cores: a TF32 tensor-core product would break the error bound.
        assert "tf32" not in ptx and "fma.rn.f32" in ptx
    else:
        assert "wgmma" in ptx


def test_cpu_without_the_interpreter_is_refused() -> None:
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        pe_kernels.TritonBackend(device="cpu")
