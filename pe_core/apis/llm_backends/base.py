"""The text-generator protocol behind the ``llm`` variation API, and its registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pe_core.errors import PrivevoError
from pe_core.registry import Registry


class GenerationError(PrivevoError):
    """A backend could not produce completions; the message says which and what to try."""


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat prompt, as chat templates and chat-completion servers take it."""

    role: Literal["system", "user", "assistant"]
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Chat = tuple[ChatMessage, ...]


@dataclass(frozen=True)
class Completion:
    """A backend's answer to one chat.

    Attributes:
        text: the generated text, decoded, without the prompt or special tokens.
        prompt_tokens: tokens of the prompt as the backend counted them.
        completion_tokens: tokens generated (at most the request's ``max_new_tokens``, unless a
            server reports otherwise).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int


@runtime_checkable
class TextGenerator(Protocol):
    """A chat model that answers a batch of chats.

    ``seeds`` holds one seed per chat, drawn by the caller from its ``np.random.Generator``:
    the same chats, limits and seeds give the same texts on the same backend and hardware
    (a hosted server may not honour seeds; see the backend's notes).
    """

    def generate(
        self,
        chats: Sequence[Chat],
        *,
        max_new_tokens: Sequence[int],
        temperature: float,
        top_p: float,
        seeds: Sequence[int],
    ) -> list[Completion]:
        """Returns one completion per chat, in order."""
        ...


def check_generate_args(
    chats: Sequence[Chat], max_new_tokens: Sequence[int], seeds: Sequence[int]
) -> None:
    """The argument checks every backend makes before generating.

    Raises:
        ValueError: lengths differ, or a limit is not positive.
    """
    if not len(chats) == len(max_new_tokens) == len(seeds):
        raise ValueError(
            f"got {len(chats)} chats, {len(max_new_tokens)} token limits and {len(seeds)} seeds"
        )
    if any(limit < 1 for limit in max_new_tokens):
        raise ValueError("every max_new_tokens must be positive")


GENERATOR_REGISTRY: Registry[TextGenerator] = Registry("text generator")


def register_generator(name: str, factory: Callable[..., TextGenerator]) -> None:
    GENERATOR_REGISTRY.register(name, factory)


def create_generator(name: str, **config: Any) -> TextGenerator:
    """Builds a registered text generator (``transformers``, ``vllm``, ``openai``)."""
    return GENERATOR_REGISTRY.create(name, **config)
