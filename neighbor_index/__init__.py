"""The neighbor_index stage: semantic neighbour tables, sparse association S+ and unigram prior.

Run it with ``python -m neighbor_index``; its artifact is written and read by
``pipeline.common.neighbor_artifact`` (``read_neighbor_arrays`` for numpy, ``load_neighbor_tables``
for torch).
"""
