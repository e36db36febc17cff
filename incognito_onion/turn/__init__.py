"""TURN over TCP/TLS with coturn: config rendering, REST credentials, supervision.

``CoturnSupervisor`` (see :mod:`.supervisor` for the interface) runs coturn; ``ice_servers`` and
``turn_urls`` build what the signaling server hands to browsers.
"""

from .credentials import Credential, ice_servers, issue, turn_urls
from .supervisor import (
    CoturnSupervisor,
    TurnBinaryMissing,
    TurnConfigError,
    TurnError,
    TurnEvent,
    TurnStartError,
)

__all__ = [
    "CoturnSupervisor",
    "Credential",
    "TurnBinaryMissing",
    "TurnConfigError",
    "TurnError",
    "TurnEvent",
    "TurnStartError",
    "ice_servers",
    "issue",
    "turn_urls",
]
