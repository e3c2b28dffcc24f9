"""The recipe language: JSON recipes (`"schema": "labctl.recipe/1"`) with typed parameters,
units, safe expressions and control flow, validated against a bench into a Plan."""

from labctl.recipe.expressions import ExpressionError, evaluate, substitute
from labctl.recipe.issues import Issue, RecipeError
from labctl.recipe.models import SCHEMA_ID, Recipe, json_schema
from labctl.recipe.plan import MaterialUse, Plan, PlannedStep
from labctl.recipe.validate import build_plan, validate

__all__ = [
    "SCHEMA_ID",
    "ExpressionError",
    "Issue",
    "MaterialUse",
    "Plan",
    "PlannedStep",
    "Recipe",
    "RecipeError",
    "build_plan",
    "evaluate",
    "json_schema",
    "substitute",
    "validate",
]
