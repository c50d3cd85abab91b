"""Small building blocks shared by the fewstep networks."""

from .blocks import GroupNorm32, timestep_embedding

__all__ = ["GroupNorm32", "timestep_embedding"]
