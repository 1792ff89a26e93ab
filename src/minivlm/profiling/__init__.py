"""Cost of a model: FLOPs per part, KV-cache memory, measured latency (`minivlm profile`)."""

from minivlm.profiling.build import BuiltRecipe, build_from_recipe
from minivlm.profiling.flops import FlopsBreakdown, count_flops
from minivlm.profiling.latency import Latency, measure_latency
from minivlm.profiling.memory import MemoryEstimate, estimate_memory
from minivlm.profiling.report import RecipeProfile, profile, profile_recipe

__all__ = [
    "BuiltRecipe", "FlopsBreakdown", "Latency", "MemoryEstimate", "RecipeProfile", "build_from_recipe",
    "count_flops", "estimate_memory", "measure_latency", "profile", "profile_recipe",
]
