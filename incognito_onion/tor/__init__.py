"""Tor: launch or attach, publish the server and TURN as one onion, watch it.

The CLI needs only :class:`TorService` (see ``service.py``), the progress/event types and the
:class:`TorError` hierarchy (``str(err)`` is one line for a person; ``err.exit_code`` the
process exit code).
"""

from .control import BootstrapProgress
from .errors import (
    TorAuthFailed,
    TorBinaryMissing,
    TorBootstrapTimeout,
    TorControlRefused,
    TorCookieUnreadable,
    TorDied,
    TorError,
    TorLaunchFailed,
    TorNoClientKeys,
    TorPublishFailed,
    TorPublishTimeout,
    TorTooOld,
    TorWrongPassword,
)
from .service import Onion, TorEvent, TorService

__all__ = [
    "BootstrapProgress",
    "Onion",
    "TorAuthFailed",
    "TorBinaryMissing",
    "TorBootstrapTimeout",
    "TorControlRefused",
    "TorCookieUnreadable",
    "TorDied",
    "TorError",
    "TorEvent",
    "TorLaunchFailed",
    "TorNoClientKeys",
    "TorPublishFailed",
    "TorPublishTimeout",
    "TorService",
    "TorTooOld",
    "TorWrongPassword",
]
