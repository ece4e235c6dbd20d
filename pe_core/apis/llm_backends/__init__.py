"""Text generators the ``llm`` API asks for completions.

``transformers`` (local CPU or GPU), ``vllm`` (an in-process GPU engine) and ``openai`` (any
OpenAI-compatible chat-completions server) are registered here; ``openai`` without a key, which
the CLI and the workers register again with the key and server their settings allow
(:func:`register_openai_backend`).
"""

from pe_core.apis.llm_backends.base import (
    GENERATOR_REGISTRY,
    Chat,
    ChatMessage,
    Completion,
    GenerationError,
    TextGenerator,
    check_generate_args,
    create_generator,
    register_generator,
)
from pe_core.apis.llm_backends.openai_backend import (
    OpenAIBackend,
    OpenAIGenerator,
    register_openai_backend,
)
from pe_core.apis.llm_backends.transformers_backend import TransformersGenerator
from pe_core.apis.llm_backends.vllm_backend import VllmGenerator

register_generator("transformers", TransformersGenerator)
register_generator("vllm", VllmGenerator)
register_openai_backend()

__all__ = [
    "GENERATOR_REGISTRY",
    "Chat",
    "ChatMessage",
    "Completion",
    "GenerationError",
    "OpenAIBackend",
    "OpenAIGenerator",
    "TextGenerator",
    "TransformersGenerator",
    "VllmGenerator",
    "check_generate_args",
    "create_generator",
    "register_generator",
    "register_openai_backend",
]
