"""The onion service's ED25519 key, in tor's own ADD_ONION form (``ED25519-V3:<base64 of the
64-byte expanded secret key>``), and the address it gives.

We make the key ourselves (``cryptography``) rather than asking tor for a new one, so the address
is known before tor is even running and stays the same when the watchdog relaunches tor. With
``tor.persistent_key`` it is kept 0600 in the state dir (``onion_key``) and the address survives
restarts. The public key of a stored expanded key is computed with a few lines of Ed25519 point
arithmetic (``cryptography`` has no API for expanded keys).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ..state import read_private, write_private

KEY_FILE = "onion_key"
PREFIX = "ED25519-V3:"

# Ed25519 (RFC 8032) — only what deriving a public key needs
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_B = (_BX, _BY, 1, _BX * _BY % _P)


def _add(p: tuple[int, int, int, int], q: tuple[int, int, int, int]) -> tuple[int, ...]:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _base_mul(scalar: int) -> bytes:
    q: tuple[int, ...] = (0, 1, 1, 0)
    p: tuple[int, ...] = _B
    while scalar:
        if scalar & 1:
            q = _add(q, p)  # type: ignore[arg-type]
        p = _add(p, p)  # type: ignore[arg-type]
        scalar >>= 1
    zinv = pow(q[2], _P - 2, _P)
    x, y = q[0] * zinv % _P, q[1] * zinv % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def onion_address(public_key: bytes) -> str:
    """The 56-character v3 onion id (no ``.onion``) of an ed25519 public key."""
    version = b"\x03"
    checksum = hashlib.sha3_256(b".onion checksum" + public_key + version).digest()[:2]
    return base64.b32encode(public_key + checksum + version).decode().lower()


class OnionKeyError(ValueError):
    pass


@dataclass(frozen=True)
class OnionKey:
    expanded: bytes  # 64 bytes: clamped scalar + nonce prefix, as tor keeps it

    def __post_init__(self) -> None:
        e = self.expanded
        if len(e) != 64 or e[0] & 7 or e[31] & 128 or not e[31] & 64:
            raise OnionKeyError("not an expanded ed25519 secret key")

    @classmethod
    def generate(cls) -> OnionKey:
        seed = Ed25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls.from_seed(seed)

    @classmethod
    def from_seed(cls, seed: bytes) -> OnionKey:
        h = bytearray(hashlib.sha512(seed).digest())
        h[0] &= 248
        h[31] &= 63
        h[31] |= 64
        return cls(bytes(h))

    @classmethod
    def from_tor(cls, text: str) -> OnionKey:
        """Parse ``ED25519-V3:<base64>`` (what ADD_ONION returns and accepts)."""
        text = text.strip()
        if not text.startswith(PREFIX):
            raise OnionKeyError("expected ED25519-V3:<base64>")
        try:
            raw = base64.b64decode(text[len(PREFIX):], validate=True)
        except ValueError:
            raise OnionKeyError("bad base64 in the onion key") from None
        return cls(raw)

    def to_tor(self) -> str:
        return PREFIX + base64.b64encode(self.expanded).decode()

    @property
    def public_key(self) -> bytes:
        return _base_mul(int.from_bytes(self.expanded[:32], "little"))

    @property
    def service_id(self) -> str:
        return onion_address(self.public_key)

    @property
    def address(self) -> str:
        return self.service_id + ".onion"

    def __repr__(self) -> str:  # never print the secret
        return "OnionKey(<secret>)"


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEY_FILE


def load_key(state_dir: Path) -> OnionKey | None:
    """The stored key, or None. Raises StateDirError (bad mode) / OnionKeyError (bad file)."""
    raw = read_private(key_path(state_dir))
    if raw is None:
        return None
    try:
        return OnionKey.from_tor(raw.decode("ascii"))
    except (UnicodeDecodeError, OnionKeyError) as exc:
        raise OnionKeyError(f"{key_path(state_dir)}: not an onion key ({exc}); move it away to "
                            f"get a new address") from None


def load_or_create_key(state_dir: Path, persistent: bool) -> OnionKey:
    """With ``persistent``: the stored key, made and stored (0600) on first use. Without: a new
    key for this run (kept in memory only, so a relaunched tor republishes the same address)."""
    if not persistent:
        return OnionKey.generate()
    key = load_key(state_dir)
    if key is None:
        key = OnionKey.generate()
        write_private(key_path(state_dir), key.to_tor() + "\n")
    return key


def public_key_of_seed(seed: bytes) -> bytes:
    """ed25519 public key of a 32-byte seed via ``cryptography`` (to cross-check _base_mul)."""
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
