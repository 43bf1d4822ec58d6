"""YAML recipes: a declarative pipeline of stages (train, prune, quantize, finetune, convert, allocate, encode,
export, evaluate), validated before anything runs (`schema.py`, lines kept by `loader.py`), run with
a checkpoint after each stage and resumable (`runner.py`, `checkpoint.py`, `stages.py`)."""
from .runner import run_recipe
from .schema import STAGES, Recipe, load_recipe, recipe_from_text

__all__ = ["STAGES", "Recipe", "load_recipe", "recipe_from_text", "run_recipe"]
