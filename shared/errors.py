"""One small error hierarchy; the CLI turns each into a red line and a documented exit code."""

from __future__ import annotations

# Exit codes, documented in every command's --help epilog.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: please report it (run with --debug for the traceback)
EXIT_USAGE = 2  # wrong command-line usage (typer/click's own code)
EXIT_INPUT = 3  # bad or missing input data (paths, DICOM, CSV, config)
EXIT_INTEGRITY = 4  # a signature, hash or verification failed
EXIT_PRIVACY = 5  # the privacy gate refused an export
EXIT_NOTHING = 6  # the command ran but produced nothing usable (e.g. no study could be ingested)

EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 internal error (rerun with --debug); 2 usage; 3 bad input; "
    "4 verification failed; 5 privacy gate refused; 6 nothing usable produced."
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
