"""Typed configuration: groups, recipe configs, loading with overrides."""

from lmforge.config.base import Group, build_config, describe, load_config, to_dict
from lmforge.config.recipes import RECIPE_CONFIGS

__all__ = ["Group", "build_config", "describe", "load_config", "to_dict", "RECIPE_CONFIGS"]
