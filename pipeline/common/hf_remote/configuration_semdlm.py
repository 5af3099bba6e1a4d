"""SemDLM's Hugging Face configuration: the remote code of a semdlm export (written by the semdlm pipeline).

config.json holds the pipeline's own fields, which the pipeline's loader reads as they are: ``kind``
("diffusion" | "ar"), ``model`` (the network's ModelConfig), ``kernel`` (the forward process and its
schedules; null for the AR baseline), ``tokenizer``, ``artifacts``, ``training``, ``data`` (the training
data's sequence length and packing) and ``neighbor_tables`` (the sha256s of the neighbour tables the export
carries in ``neighbors/``, which the pipeline's kernels and samplers read; the network does not).
"""
from transformers import PretrainedConfig

# The usual Hugging Face names, mirrored from ``model`` for generic tools (context length, vocabulary).
_MIRRORED = (("vocab_size", "vocab_size"), ("hidden_size", "d_model"), ("num_hidden_layers", "n_layer"),
             ("num_attention_heads", "n_head"), ("max_position_embeddings", "max_seq_len"))


class SemDLMConfig(PretrainedConfig):
    model_type = "semdlm"

    def __init__(self, kind="diffusion", model=None, kernel=None, tokenizer=None, artifacts=None, training=None,
                 data=None, neighbor_tables=None, **kwargs):
        self.kind = kind
        self.model = dict(model or {})
        self.kernel = kernel
        self.tokenizer = dict(tokenizer or {})
        self.artifacts = dict(artifacts or {})
        self.training = dict(training or {})
        self.data = data
        self.neighbor_tables = neighbor_tables
        for hf_name, ours in _MIRRORED:
            if ours in self.model:
                kwargs[hf_name] = self.model[ours]
        kwargs.setdefault("tie_word_embeddings", False)  # a tied head reads the embedding itself
        super().__init__(**kwargs)
