"""``python -m pipeline.neighbor_index`` = ``python -m neighbor_index``: the neighbor index stage's CLI under the one
``python -m pipeline.<tool>`` / ``semdlm-<tool>`` naming of every tool (README, Tools). The stage is its own
package (``neighbor_index/``: the CLI in ``neighbor_index/__main__.py``, the library in neighbor_index/build.py).
"""
from __future__ import annotations

import sys

from neighbor_index.__main__ import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
