"""One small error hierarchy; the CLI turns each into a red line and a documented exit code."""

from __future__ import annotations

import errno

# Exit codes, documented in every command's --help epilog.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug (please report it; --debug shows the traceback), or the machine
# stopped the work (a worker process killed by the out-of-memory killer)
EXIT_USAGE = 2  # wrong command-line usage (typer/click's own code)
EXIT_INPUT = 3  # bad or missing input (paths, DICOM, CSV, config; unwritable folder, full disk)
EXIT_INTEGRITY = 4  # a signature, hash or verification failed
EXIT_PRIVACY = 5  # the privacy gate refused an export
EXIT_NOTHING = 6  # the command ran but produced nothing usable (e.g. no study could be ingested)
EXIT_BUSY = 7  # another command is writing this workspace (retry when it has finished)

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 internal error (rerun with --debug); 2 usage; 3 bad input; "
    "4 verification failed; 5 privacy gate refused; 6 nothing usable produced; "
    "7 workspace in use by another command."
)


class ToolkitError(Exception):
    """Base class: a one-line message for the user plus an optional hint on what to do next."""

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class InputError(ToolkitError):
    """The user gave us something we cannot use: a missing path, a malformed CSV, a bad config."""

    exit_code = EXIT_INPUT


class DicomError(InputError):
    """A DICOM file or series cannot be turned into a volume; carries the skip reason."""


class IntegrityError(ToolkitError):
    """A hash, signature or checksum did not verify."""

    exit_code = EXIT_INTEGRITY


class PrivacyGateError(ToolkitError):
    """The privacy screen refused to let an artifact leave the site."""

    exit_code = EXIT_PRIVACY


class NothingProducedError(ToolkitError):
    """The command ran to completion but produced nothing usable."""

    exit_code = EXIT_NOTHING


class WorkspaceBusyError(ToolkitError):
    """Another live process holds the workspace's lock: one workspace, one writer."""

    exit_code = EXIT_BUSY


# OSErrors that mean "this path, this disk or these permissions", not a bug in the toolkit.
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_WRONG_PATH = {
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOTEMPTY,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}


def from_os_error(exc: OSError) -> InputError | None:
    """The user-facing ``InputError`` for an OSError about the machine's files (permission
    denied, read-only or full disk, a path that is a file where a folder is needed, ...),
    with what to do; None for any other OSError (left to be reported as a bug)."""
    what = (exc.strerror or str(exc)).rstrip(".")
    where = f": {exc.filename}" if exc.filename else ""
    if exc.errno in _NO_ACCESS:
        return InputError(
            f"{what}{where}",
            hint="the command needs to read or write there: check that folder's owner and "
            "permissions (or a read-only mount), or choose another folder",
        )
    if exc.errno in _NO_SPACE:
        return InputError(
            f"{what}{where}",
            hint="free space on that disk or choose a folder on another one, then rerun the "
            "same command: finished steps are kept",
        )
    if exc.errno in _WRONG_PATH:
        return InputError(f"{what}{where}", hint="check the paths given on the command line")
    return None
