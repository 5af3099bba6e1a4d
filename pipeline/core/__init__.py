"""The diffusion math: kernels and schedules, the model, objectives, likelihood bounds, time sampling.

Torch only, no file I/O: everything here takes tensors and configs, so it runs the same under the
trainer, the samplers, the evaluation and the tests.
"""
