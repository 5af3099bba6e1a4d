"""Research tools: kernel diagnostics, the Reed-Solomon exact-KL harness of unmasking schedules,
and the kernel inspector. Libraries here; their CLIs are the thin ``pipeline/<tool>.py`` entry points.
"""
