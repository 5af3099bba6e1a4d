"""The user errors every stage raises, and :func:`stage_errors`, which turns each into one line
``PROG: error: message`` and exit status 2 (both re-exported by :mod:`pipeline.common.artifacts`).
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import errno
import sys

# A write that failed for lack of space (or quota) is the environment's fault, not a bug.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class StageError(Exception):
    """A user error of a stage: bad input, option, upstream artifact or environment, never a bug.

    :func:`stage_errors` turns it into one line ``PROG: error: message``
    and exit status 2. Every user error a stage raises is one of these (or a ValueError /
    FileNotFoundError, which ``stage_errors`` treats the same way); a subclass may also derive
    from the built-in its callers used to catch (``ArtifactError`` is a RuntimeError,
    ``ExportExistsError`` a FileExistsError, ...).
    """


class ConfigError(StageError, ValueError):
    """An invalid stage configuration (raised by the config dataclasses' validation)."""


class ArtifactError(StageError, RuntimeError):
    """A missing, incomplete or mismatched artifact. The message names the directory."""


class DiskFullError(StageError, OSError):
    """A write ran out of space or quota; the message says what was kept intact."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


# What stage_errors reports as a user error: ours, plus the built-ins the stages raise for bad input
# (and a full disk, see is_disk_full). Anything else (a RuntimeError from torch, a KeyError, ...) is a
# bug and keeps its traceback.
USER_ERRORS = (StageError, FileNotFoundError, ValueError)


@contextlib.contextmanager
def stage_errors(prog: str):
    """Turn user errors (:data:`USER_ERRORS`, and a write that found the disk full) into one line
    ``PROG: error: message`` on stderr and exit status 2 (CLI helper); every other exception
    propagates with its traceback."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, USER_ERRORS) and not is_disk_full(exc):
            raise
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        if is_disk_full(exc):  # a bare OSError from a write the stage did not wrap
            message = f"no space left on device: {message}; free space and rerun"
        print(f"{prog}: error: {message or type(exc).__name__}", file=sys.stderr)
        raise SystemExit(2) from None


def library_not_a_command(module: str, command: str) -> int:
    """What a library module prints when run as ``python -m``: the command it is the library of, exit 2
    (instead of exiting 0 with no output, which reads as success)."""
    print(f"python -m {module}: error: this is a library module; the command is python -m {command} "
          f"(or semdlm-{command.rpartition('.')[2].replace('_', '-')})", file=sys.stderr)
    return 2
