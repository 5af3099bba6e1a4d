"""``python -m pipeline.rs_harness``: thin entry point (library: pipeline/research/rs_harness.py)."""
from pipeline.research.rs_harness import main

if __name__ == "__main__":
    raise SystemExit(main())
