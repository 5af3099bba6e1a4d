"""Running a stage's CLI in-process the way the shell does (test helper)."""
from __future__ import annotations

from collections.abc import Callable, Sequence


def run_main(main: Callable[[Sequence[str]], int], *args, progress: bool = False) -> int:
    """``main([str(a) for a in args])`` (plus ``--no-progress`` unless ``progress``) as its exit status:
    an argparse or stage-error ``SystemExit`` becomes its code, as the shell would see it."""
    argv = [str(a) for a in args] + ([] if progress else ["--no-progress"])
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)
