"""Every training recipe by name, in one explicit table, and `build(name, opts)`.

Text recipes are in models/build/text_recipes.py, the from-classifier recipe in
models/build/from_classifier.py, the captioning recipes in models/build/caption_recipes.py.
A recipe writes a complete artifact but does not calibrate its policies: fitting is
policies/fit/ (the `eeserve train` command and the build worker call it after a build).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from models.build import caption_recipes, from_classifier, text_recipes
from models.build.options import BuildOptions, Recipe

__all__ = ["RECIPES", "BuildOptions", "Recipe", "build"]

RECIPES: Final[Mapping[str, Recipe]] = {
    "text-default": text_recipes.text_default,
    "text-base": text_recipes.text_base,
    "backbone": text_recipes.backbone_recipe,
    "tiny-text": text_recipes.tiny_text,
    "from-classifier": from_classifier.from_classifier,
    "caption-default": caption_recipes.caption_default,
    "tiny-caption": caption_recipes.tiny_caption,
}


def build(name: str, opts: BuildOptions) -> dict[str, Any]:
    """Run the recipe `name` into `opts.out`; its manifest. ValueError names unknown recipes."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name](opts)
