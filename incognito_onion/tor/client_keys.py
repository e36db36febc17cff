"""v3 onion client authorization keys: x25519 pairs, one per participant (or device).

Only the public half is kept, in the state dir (``client_keys/NAME.auth``, 0600, tor's own
``descriptor:x25519:<base32>`` format); the private half is shown once, as the line a
participant pastes into Tor Browser (``<onion-id>:descriptor:x25519:<base32 private key>``;
Tor Browser also accepts the bare private key when it prompts for one).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ..state import ensure_state_dir, read_private, write_private

KEYS_DIR = "client_keys"
SUFFIX = ".auth"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_B32_KEY = re.compile(r"^[A-Z2-7]{52}$")


class ClientKeyError(Exception):
    """A key cannot be added/removed/read; the message says why."""


@dataclass(frozen=True)
class ClientKey:
    name: str
    public: str  # base32, no padding (52 chars): what ADD_ONION's ClientAuthV3= takes


@dataclass(frozen=True)
class NewClientKey:
    name: str
    public: str
    private: str  # base32, no padding: the part a participant keeps

    def browser_line(self, onion_id: str) -> str:
        return browser_line(onion_id, self.private)

    def tor_client_auth(self) -> str:
        """``x25519:<base64>`` for ``ONION_CLIENT_AUTH_ADD <onion-id> ...``."""
        return tor_client_auth(self.private)


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def _unb32(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


def generate(name: str = "") -> NewClientKey:
    priv = X25519PrivateKey.generate()
    raw_priv = priv.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    raw_pub = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return NewClientKey(name, _b32(raw_pub), _b32(raw_priv))


def browser_line(onion_id: str, private_b32: str) -> str:
    onion_id = onion_id.removesuffix(".onion")
    return f"{onion_id}:descriptor:x25519:{private_b32}"


def tor_client_auth(private_b32: str) -> str:
    return "x25519:" + base64.b64encode(_unb32(private_b32)).decode()


def keys_dir(state_dir: Path) -> Path:
    return Path(state_dir) / KEYS_DIR


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ClientKeyError(f"bad key name {name!r}: use 1-32 letters, digits, - or _ "
                             f"(starting with a letter or digit)")
    return name


def add(state_dir: Path, name: str) -> NewClientKey:
    """Make a pair for ``name`` and store its public half; refuses an existing name."""
    check_name(name)
    d = ensure_state_dir(keys_dir(state_dir))
    path = d / f"{name}{SUFFIX}"
    if path.exists():
        raise ClientKeyError(f"a key named {name!r} exists already: remove it first "
                             f"(keys remove {name}) or pick another name")
    key = generate(name)
    write_private(path, f"descriptor:x25519:{key.public}\n")
    return key


def _parse(path: Path) -> ClientKey:
    raw = read_private(path)
    text = (raw or b"").decode("ascii", "replace").strip()
    parts = text.split(":")
    if len(parts) != 3 or parts[:2] != ["descriptor", "x25519"] or not _B32_KEY.match(parts[2]):
        raise ClientKeyError(f"{path}: not a client key (expected descriptor:x25519:<base32>)")
    return ClientKey(path.name[: -len(SUFFIX)], parts[2])


def list_keys(state_dir: Path) -> list[ClientKey]:
    """Every stored key, sorted by name. Raises ClientKeyError on a damaged file."""
    d = keys_dir(state_dir)
    if not d.is_dir():
        return []
    return [_parse(p) for p in sorted(d.glob(f"*{SUFFIX}")) if NAME_RE.match(p.stem)]


def remove(state_dir: Path, name: str) -> bool:
    """Delete ``name``'s key; False if there was none."""
    check_name(name)
    try:
        (keys_dir(state_dir) / f"{name}{SUFFIX}").unlink()
    except FileNotFoundError:
        return False
    return True
