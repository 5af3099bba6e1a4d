"""Samplers of the diffusion models (blockwise Eq 121, tau-leaping CTMC, MDLM) and the Eq 23 penalty."""
from .base import SamplerConfig  # noqa: F401
from .generate import generate  # noqa: F401
from .penalty import PenaltyConfig, association_by_columns  # noqa: F401
