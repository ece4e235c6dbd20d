"""Text generators the ``llm`` API asks for completions.

``transformers`` (local CPU or GPU) and ``vllm`` (an in-process GPU engine) are registered here;
``openai`` (any OpenAI-compatible chat-completions server) needs the network, so it lives at the
edge (:mod:`privevo.openai_backend`) and the CLI and the workers register it.
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
from pe_core.apis.llm_backends.transformers_backend import TransformersGenerator
from pe_core.apis.llm_backends.vllm_backend import VllmGenerator

register_generator("transformers", TransformersGenerator)
register_generator("vllm", VllmGenerator)

__all__ = [
    "GENERATOR_REGISTRY",
    "Chat",
    "ChatMessage",
    "Completion",
    "GenerationError",
    "TextGenerator",
    "TransformersGenerator",
    "VllmGenerator",
    "check_generate_args",
    "create_generator",
    "register_generator",
]
