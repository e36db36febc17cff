"""Logging that cannot leak: one stderr handler with a filter that blanks anything shaped like
an IP address, a room id, a peer id or a key, whatever library wrote the line. The code already
avoids logging those; this is the second lock on the door."""

from __future__ import annotations

import logging
import re
import sys

_REDACT = [
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), "<ip>"),
    (re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"), "<ip>"),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{16,}(?![A-Za-z0-9_-])"), "<id>"),
]


def redact(text: str) -> str:
    for pattern, repl in _REDACT:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        debugging = logging.getLogger().level <= logging.DEBUG
        if record.exc_info and record.exc_info[1] is not None and not debugging:
            # keep the type and a redacted message, not a traceback full of values
            exc = record.exc_info[1]
            record.msg += f" ({type(exc).__name__}: {redact(str(exc))})"
            record.exc_info = None
            record.exc_text = None
        return True


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "aiohttp.server", "aiohttp.web", "stem", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # The socket.io libraries warn about things any client can trigger (unknown acks, foreign
    # namespaces): at warning level a client could fill the disk, so only their errors pass.
    for chatty in ("engineio", "socketio", "incognito_onion.engineio", "incognito_onion.socketio"):
        logging.getLogger(chatty).setLevel(max(logging.ERROR, root.level))
    logging.getLogger("aiohttp.access").disabled = True
