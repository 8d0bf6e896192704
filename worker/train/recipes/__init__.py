"""Per-architecture knowledge: `recipe_for(model_or_config)` returns what to keep, what to adapt, and how.

Recipes are discovered from an instantiated model (a config is instantiated on the meta device first),
never from guessed module paths.
"""

from __future__ import annotations

from typing import Any

from worker.train.recipes.base import Recipe

__all__ = ["Recipe", "recipe_for"]


def recipe_for(model_or_config: Any) -> Recipe:
    """The recipe for a model (instantiated, possibly on the meta device) or a transformers config."""
    from worker.train.recipes.base import instantiate_on_meta
    from worker.train.recipes.gemma3n import gemma3n_recipe, is_gemma3n
    from worker.train.recipes.generic import generic_recipe

    model = model_or_config
    if not hasattr(model_or_config, "named_modules"):
        model = instantiate_on_meta(model_or_config)
    # A PEFT wrapper: discover on the underlying transformers model so names match the loader's.
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    if is_gemma3n(model.config):
        return gemma3n_recipe(model)
    return generic_recipe(model)
