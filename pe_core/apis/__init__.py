"""Variation APIs: generators that make random samples and variations of samples."""

from pe_core.apis.base import API_REGISTRY, VariationApi, create_api, register_api
from pe_core.apis.drawtext import DrawText
from pe_core.apis.grammar import GrammarApi

register_api("drawtext", DrawText)
register_api("grammar", GrammarApi)

__all__ = ["API_REGISTRY", "DrawText", "GrammarApi", "VariationApi", "create_api", "register_api"]
