"""Plumbing shared by every stage: the artifact layer, HF asset loading, the corpus reader, the neighbour
and export artifacts.

The only part of ``pipeline`` that ``preprocess/`` and ``neighbor_index/`` import; of ``pipeline`` it imports
``pipeline.core`` alone (tests/unit/test_layers.py). torch is imported at module level only by the export side
(``export_artifact.py``, ``model_card.py``, which build the model) and lazily elsewhere, so the data stages
start without it.
"""
