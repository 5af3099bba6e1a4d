"""Templates of the Hugging Face remote code that every export carries (see pipeline.common.hf_export).

``configuration_semdlm.py`` and ``modeling_semdlm.py`` are copied verbatim into the export, next to
``semdlm_model.py`` (a verbatim copy of pipeline/core/model.py) which they import relatively. They are
never imported from this package: transformers imports them from its modules cache when an export is
loaded with ``trust_remote_code=True``.
"""
