"""``python -m pipeline.preprocess`` = ``python -m preprocess``: the preprocess stage's CLI under the one
``python -m pipeline.<tool>`` / ``semdlm-<tool>`` naming of every tool (README, Tools). The stage is its own
package (``preprocess/``: the CLI in ``preprocess/__main__.py``, the library in preprocess/build.py (run_preprocess)).
"""
from __future__ import annotations

import sys

from preprocess.__main__ import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
