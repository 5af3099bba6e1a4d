"""Hugging Face wrappers of a semdlm export's network: the remote code of the export (semdlm pipeline).

``semdlm_model.py`` next to this file is a verbatim copy of the pipeline's ``pipeline/core/model.py``, so
the logits equal those of the pipeline's own loader exactly. Both wrappers hold the network as
``backbone``. model.safetensors keeps the pipeline's keys: ``backbone.*`` for the AR baseline (as the
wrapper), no prefix for a diffusion model, which transformers maps onto ``backbone`` through
``base_model_prefix`` (a base model's weights loaded into a model class).

* ``SemDLMForMaskedLM`` (AutoModelForMaskedLM): ``model(input_ids, timesteps=t)`` with t in [0, 1]
  (a float or Float[B]; the forward process's time, needed when the model is time-conditioned)
  returns the denoiser's logits over x_0 at every position, ``[B, L, V]`` float32, with the clean support
  of config.json's ``posterior`` record applied (-inf at tokens never read as clean), as the pipeline's
  loader does. For a kernel-aware export (``posterior.kernel_aware``) these are the clean-token scores
  log f(v | x_t): the posterior is their softmax after adding log q_t(x_t^i | v) of the export's kernel
  (and the change-aware correction ``posterior.log_ratio`` at v = x_t^i); the pipeline's samplers and
  bounds do that (pipeline/core/posterior.py, docs/likelihood.md Sec 7).
* ``SemDLMForCausalLM`` (AutoModelForCausalLM): the autoregressive baseline; ``logits[:, i]`` predict
  token i + 1; ``labels`` gives the shifted cross-entropy; ``generate`` works (no KV cache).
"""
from __future__ import annotations

import base64

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, MaskedLMOutput

from .configuration_semdlm import SemDLMConfig
from .semdlm_model import DiffusionTransformer, ModelConfig


class SemDLMPreTrainedModel(PreTrainedModel):
    config_class = SemDLMConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]

    def __init__(self, config: SemDLMConfig):
        super().__init__(config)
        self.backbone = DiffusionTransformer(ModelConfig(**config.model))
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        # transformers may leave the weights in the file's memory map (8-byte aligned): CPU matmul kernels then
        # take other code paths and the logits differ in the last bit. Fresh copies compute as the pipeline does.
        with torch.no_grad():
            for param in model.parameters():
                param.data = param.data.clone()
        return loaded

    def _init_weights(self, module):
        # A new model keeps the network's own init (reset_parameters); a loaded one gets every weight from the file.
        pass

    def get_input_embeddings(self):
        return self.backbone.embed

    def set_input_embeddings(self, value):
        self.backbone.embed = value


def clean_support(posterior: dict | None) -> torch.Tensor | None:
    """Bool [V] of config.json's ``posterior.support`` record (base64 of the packed bits), None without one."""
    record = (posterior or {}).get("support")
    if not record:
        return None
    packed = torch.frombuffer(bytearray(base64.b64decode(record["bits"])), dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> torch.arange(7, -1, -1)) & 1  # numpy.packbits' order: the high bit first
    return bits.flatten()[: int(record["size"])].bool()


class SemDLMForMaskedLM(SemDLMPreTrainedModel):
    def __init__(self, config: SemDLMConfig):
        super().__init__(config)
        self.backbone.set_clean_support(clean_support(getattr(config, "posterior", None)))

    def forward(self, input_ids, timesteps=None, attention_mask=None, return_dict=None, **kwargs):
        if timesteps is not None:
            timesteps = torch.as_tensor(timesteps, dtype=torch.float32, device=input_ids.device)
            if timesteps.dim() == 0:  # one t for the batch (a contiguous copy: the network sees what it would)
                timesteps = timesteps.repeat(input_ids.shape[0])
        logits = self.backbone(input_ids, timesteps, attention_mask)
        if return_dict is False:
            return (logits,)
        return MaskedLMOutput(logits=logits)


class SemDLMForCausalLM(SemDLMPreTrainedModel, GenerationMixin):
    def forward(self, input_ids, attention_mask=None, labels=None, return_dict=None, **kwargs):
        logits = self.backbone(input_ids, None, attention_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        if return_dict is False:
            return (logits,) if loss is None else (loss, logits)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No KV cache: every step runs the whole prefix.
        return {"input_ids": input_ids, "attention_mask": attention_mask}
