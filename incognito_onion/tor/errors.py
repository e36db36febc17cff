"""Everything that can go wrong with tor, one class per cause.

``str(error)`` is one line for a person (what happened and what to do), never a traceback; each
class has its own process exit code (``error.exit_code``) so scripts can tell the causes apart.
Codes 20-39 are tor's; the CLI returns them unchanged.
"""

from __future__ import annotations


class TorError(Exception):
    """Base class: tor could not do what we needed."""

    exit_code = 20

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TorBinaryMissing(TorError):
    """The tor executable is not installed / not found / not executable."""

    exit_code = 21


class TorTooOld(TorError):
    """tor is older than we support (ADD_ONION with ClientAuthV3 needs 0.4.6.1)."""

    exit_code = 22


class TorLaunchFailed(TorError):
    """The tor we launched exited at once (bad torrc line, data directory in use, ...)."""

    exit_code = 23


class TorControlRefused(TorError):
    """Nothing (or not tor) answers on the control port / socket."""

    exit_code = 24


class TorAuthFailed(TorError):
    """tor refused our control-port authentication."""

    exit_code = 25


class TorWrongPassword(TorAuthFailed):
    """The control password is wrong, or one is needed and none was given."""

    exit_code = 26


class TorCookieUnreadable(TorAuthFailed):
    """tor wants cookie authentication but we cannot read its cookie file."""

    exit_code = 27


class TorBootstrapTimeout(TorError):
    """tor did not reach 100 % bootstrap in time; the message says where it was stuck."""

    exit_code = 28

    def __init__(self, message: str, percent: int = 0, summary: str = ""):
        super().__init__(message)
        self.percent = percent
        self.summary = summary


class TorPublishTimeout(TorError):
    """The onion descriptor was not uploaded to any directory in time."""

    exit_code = 29


class TorPublishFailed(TorError):
    """tor refused to create the onion service (ADD_ONION answered an error)."""

    exit_code = 30


class TorDied(TorError):
    """tor exited, or stopped answering, while we were using it."""

    exit_code = 31


class TorNoClientKeys(TorError):
    """tor.client_auth is on but no participant key exists yet."""

    exit_code = 32


ALL_ERRORS: tuple[type[TorError], ...] = (
    TorError, TorBinaryMissing, TorTooOld, TorLaunchFailed, TorControlRefused, TorAuthFailed,
    TorWrongPassword, TorCookieUnreadable, TorBootstrapTimeout, TorPublishTimeout,
    TorPublishFailed, TorDied, TorNoClientKeys,
)
