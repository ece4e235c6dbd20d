"""Variation APIs: generators that make random samples and variations of samples."""

from pe_core.apis.base import API_REGISTRY, VariationApi, create_api, register_api
from pe_core.apis.diffusion import DiffusionApi
from pe_core.apis.drawtext import DrawText
from pe_core.apis.grammar import GrammarApi
from pe_core.apis.llm import LlmApi
from pe_core.apis.strokes import Strokes

register_api("diffusion", DiffusionApi)
register_api("drawtext", DrawText)
register_api("grammar", GrammarApi)
register_api("llm", LlmApi)
register_api("strokes", Strokes)

__all__ = [
    "API_REGISTRY",
    "DiffusionApi",
    "DrawText",
    "GrammarApi",
    "LlmApi",
    "Strokes",
    "VariationApi",
    "create_api",
    "register_api",
]
