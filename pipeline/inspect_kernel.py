"""``python -m pipeline.inspect_kernel``: thin entry point (library: pipeline/research/inspect_kernel.py)."""
from pipeline.research.inspect_kernel import main

if __name__ == "__main__":
    raise SystemExit(main())
