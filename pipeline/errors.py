"""The errors the library raises for a user's request, data or disk (not for its own bugs).

Their messages speak of settings and files, never of command-line flags or config keys:
the CLI (`stages/`) and the workflow say how to change a setting in their own words. Each
also derives from the builtin a caller would catch (ValueError, RuntimeError, OSError).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from pipeline.units import format_bytes


class RLDError(Exception):
    """Base of the library's errors about a request, data or disk."""


class ConfigError(RLDError, ValueError):
    """A request the library cannot honour; `setting` names the setting at fault, if one is."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class NeedsTeacher(ConfigError):
    """A method that distils was asked to train without a store or a teacher to run."""

    def __init__(self, method: str):
        super().__init__(f"method {method!r} needs a teacher: a logit store, or a teacher to run every step",
                         setting="loss")
        self.method = method


class TeacherFileError(RLDError, ValueError):
    """A teacher file is missing, foreign or out of date; `remedy` says what makes a good one:
    "make" (train or import), "import" (wrap foreign weights), "reimport" (measure again)."""

    def __init__(self, message: str, remedy: str, arch: str | None = None, missing: bool = False):
        super().__init__(message)
        self.remedy, self.arch, self.missing = remedy, arch, missing


class RunExists(RLDError, RuntimeError):
    """The output holds a finished run, or a checkpoint of a different run; forcing starts over."""


class TrainingDiverged(RLDError, RuntimeError):
    """A training epoch's loss was NaN or infinite."""


class DiskFull(RLDError, OSError):
    """A file could not be written for lack of space. Everything the library writes is
    resumable, so freeing space and running the same request again continues from there."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        free = free_bytes(self.path)
        super().__init__(
            errno.ENOSPC,
            f"{self.path}: could not be written, the disk is full ({format_bytes(free)} free there); "
            "free some space and run the same command again: it resumes where it stopped",
        )

    def __str__(self) -> str:
        return self.strerror


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk (or quota) while writing `path` into a DiskFull naming it."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as err:
        if err.errno in _FULL:
            raise DiskFull(getattr(err, "filename", None) or path) from None
        raise


def free_bytes(path: Path) -> int:
    """Free space on the file system that holds `path` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return 0
