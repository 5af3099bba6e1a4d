"""The training stage's building blocks (config, data, checkpoints, metrics, EMA, DeepSpeed config).

``pipeline/train.py`` is the thin entry point that wires them together. Nothing here imports
DeepSpeed at module level, so ``pipeline.export`` and the tests can use the light parts alone.
"""
