"""The engine configuration of a worker and of the evaluation harness, from one place."""

from __future__ import annotations

from state.engine import EngineConfig
from state.ranking import BlendWeights
from streams.settings import Settings


def engine_config(settings: Settings) -> EngineConfig:
    """Half-lives, blend weights and learners from ``settings`` (``STREAMREC_*``)."""
    return EngineConfig(
        interest_half_life_s=settings.interest_half_life_s,
        popularity_half_life_s=settings.popularity_half_life_s,
        popularity_long_half_life_s=settings.popularity_long_half_life_s,
        item_age_half_life_s=settings.item_age_half_life_s,
        weights=BlendWeights(
            settings.weight_content, settings.weight_collab, settings.weight_popular
        ),
        max_interests=settings.max_interests,
        click_model=settings.click_model,
        ease=settings.ease,
        ease_max_items=settings.ease_max_items,
    )
