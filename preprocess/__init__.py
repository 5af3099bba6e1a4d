"""Preprocess stage: corpus -> mosaicml-streaming MDS shards + unigram counts."""
