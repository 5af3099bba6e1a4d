"""``python -m pipeline.diagnose``: thin entry point (library: pipeline/research/diagnose.py)."""
from pipeline.research.diagnose import main

if __name__ == "__main__":
    raise SystemExit(main())
