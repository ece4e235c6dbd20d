"""Offline batched generation with a vLLM engine in this process (GPU only).

For a model served by ``vllm serve`` (another process or machine) use the ``openai`` backend,
which the CLI and the workers register. This backend is not exercised by the test suite, which
runs without a GPU or vLLM; it only checks that a missing vLLM gives the uniform message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pe_core.apis.llm_backends.base import Chat, Completion, check_generate_args
from pe_core.errors import import_optional


class VllmGenerator:
    """A ``vllm.LLM`` engine, built on the first call.

    Args:
        model: a model folder or name, as ``vllm.LLM`` takes it.
        dtype: vLLM's dtype ("auto", "bfloat16", "float16").
        gpu_memory_utilization: share of GPU memory vLLM may take.
        tensor_parallel_size: GPUs to shard the model over.
        max_model_len: longest prompt plus answer, in tokens (None: the model's).

    Raises:
        MissingDependencyError: vLLM is not installed (the ``vllm`` extra).
    """

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
    ) -> None:
        # Imported here, not on first use: a missing vLLM should stop a job before it starts.
        self._vllm = import_optional("vllm", "vllm")
        self._engine_args: dict[str, Any] = {
            "model": model,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
        }
        self._engine: Any = None

    def generate(
        self,
        chats: Sequence[Chat],
        *,
        max_new_tokens: Sequence[int],
        temperature: float,
        top_p: float,
        seeds: Sequence[int],
    ) -> list[Completion]:
        """Generates all chats in one engine call; vLLM batches and seeds each request."""
        check_generate_args(chats, max_new_tokens, seeds)
        if not chats:
            return []
        if self._engine is None:
            self._engine = self._vllm.LLM(**self._engine_args)
        params = [
            self._vllm.SamplingParams(
                max_tokens=int(limit), temperature=temperature, top_p=top_p, seed=int(seed)
            )
            for limit, seed in zip(max_new_tokens, seeds, strict=True)
        ]
        outputs = self._engine.chat(
            [[m.as_dict() for m in chat] for chat in chats], sampling_params=params, use_tqdm=False
        )
        return [
            Completion(
                out.outputs[0].text, len(out.prompt_token_ids), len(out.outputs[0].token_ids)
            )
            for out in outputs
        ]
