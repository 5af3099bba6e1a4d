"""Samplers of the diffusion models (blockwise Eq 121, tau-leaping CTMC, MDLM) and the Eq 23 penalty."""
from .base import SamplerConfig, generate  # noqa: F401
from .penalty import PenaltyConfig, association_from_neighbors, load_association, semantic_association  # noqa: F401
