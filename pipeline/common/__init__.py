"""Plumbing shared by every stage: the artifact layer, HF asset loading, the neighbour artifact.

The only part of ``pipeline`` that ``preprocess/`` and ``neighbor_index/`` import; it imports
nothing else of ``pipeline`` (no torch at module level except the neighbour artifact's tensor views).
"""
