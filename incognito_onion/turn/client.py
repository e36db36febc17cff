"""A minimal TURN client over TCP or TLS (RFC 8489/8656), enough to prove a coturn really serves:
Allocate with long-term (REST) credentials, CreatePermission, Refresh. The supervisor uses
:func:`probe` as its readiness check; the benchmark uses it too.

Not a general STUN library: one request at a time, no retransmissions (TCP), no ChannelData.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl as ssl_mod
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ..tasks import cancel_and_wait

MAGIC = 0x2112A442
ALLOCATE, REFRESH, SEND, DATA, CREATE_PERMISSION = 0x003, 0x004, 0x006, 0x007, 0x008
REQUEST, INDICATION, SUCCESS, ERROR = 0x0000, 0x0010, 0x0100, 0x0110

A_USERNAME, A_MI, A_ERROR, A_LIFETIME = 0x0006, 0x0008, 0x0009, 0x000D
A_PEER, A_DATA, A_REALM, A_NONCE, A_RELAYED = 0x0012, 0x0013, 0x0014, 0x0015, 0x0016
A_TRANSPORT, A_MAPPED, A_FINGERPRINT = 0x0019, 0x0020, 0x8028
UDP = 17


class TurnClientError(Exception):
    """A TURN request failed; ``code`` is the STUN error code (0 for transport problems)."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"{code} {reason}" if code else reason)
        self.code = code
        self.reason = reason


@dataclass
class Message:
    method: int
    cls: int
    tid: bytes = field(default_factory=lambda: os.urandom(12))
    attrs: list[tuple[int, bytes]] = field(default_factory=list)

    def get(self, kind: int) -> bytes | None:
        for k, v in self.attrs:
            if k == kind:
                return v
        return None


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * _pad(len(value))


def encode(msg: Message, key: bytes | None = None, fingerprint: bool = True) -> bytes:
    body = b"".join(_attr(k, v) for k, v in msg.attrs)
    mtype = msg.method & 0xF | (msg.method & 0x70) << 1 | (msg.method & 0xF80) << 2 | msg.cls
    if key is not None:
        head = struct.pack("!HHI", mtype, len(body) + 24, MAGIC) + msg.tid
        mac = hmac.new(key, head + body, hashlib.sha1).digest()
        body += _attr(A_MI, mac)
    if fingerprint:
        head = struct.pack("!HHI", mtype, len(body) + 8, MAGIC) + msg.tid
        crc = (binascii.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += _attr(A_FINGERPRINT, struct.pack("!I", crc))
    return struct.pack("!HHI", mtype, len(body), MAGIC) + msg.tid + body


def decode(data: bytes) -> Message:
    mtype, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC or len(data) < 20 + length:
        raise TurnClientError(0, "not a STUN message")
    method = mtype & 0xF | (mtype >> 1) & 0x70 | (mtype >> 2) & 0xF80
    msg = Message(method, mtype & 0x0110, data[8:20])
    pos, end = 20, 20 + length
    while pos + 4 <= end:
        kind, n = struct.unpack("!HH", data[pos:pos + 4])
        msg.attrs.append((kind, data[pos + 4:pos + 4 + n]))
        pos += 4 + n + _pad(n)
    return msg


def xor_address(value: bytes, tid: bytes) -> tuple[str, int]:
    family, xport = struct.unpack("!xBH", value[:4])
    port = xport ^ (MAGIC >> 16)
    mask = struct.pack("!I", MAGIC) + tid
    raw = bytes(a ^ b for a, b in zip(value[4:], mask, strict=False))
    return str(ipaddress.ip_address(raw[:4] if family == 1 else raw[:16])), port


def xor_encode(host: str, port: int, tid: bytes) -> bytes:
    addr = ipaddress.ip_address(host)
    mask = struct.pack("!I", MAGIC) + tid
    raw = bytes(a ^ b for a, b in zip(addr.packed, mask, strict=False))
    return struct.pack("!xBH", 1 if addr.version == 4 else 2, port ^ (MAGIC >> 16)) + raw


class TurnClient:
    """One TURN-over-TCP/TLS control connection holding at most one allocation.

    ``async with TurnClient(host, port, username, password) as c: relay = await c.allocate()``.
    Data indications from peers land in ``c.received`` as ``((host, port), bytes)``.
    """

    def __init__(self, host: str, port: int, username: str, password: str, *,
                 ssl: ssl_mod.SSLContext | None = None, timeout: float = 3.0,
                 sock: socket.socket | None = None):
        # ``sock``: an already connected stream (e.g. through a SOCKS proxy to an onion)
        self.host, self.port, self.ssl, self.timeout = host, port, ssl, timeout
        self.sock = sock
        self.username, self.password = username, password
        self.realm: bytes | None = None
        self.nonce: bytes | None = None
        self.key: bytes | None = None
        self.relayed: tuple[str, int] | None = None
        self.mapped: tuple[str, int] | None = None
        self.received: asyncio.Queue[tuple[tuple[str, int], bytes]] = asyncio.Queue()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: dict[bytes, asyncio.Future[Message]] = {}
        self._lost: str | None = None

    async def __aenter__(self) -> TurnClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        try:
            where = {"sock": self.sock} if self.sock is not None else {
                "host": self.host, "port": self.port}
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(**where, ssl=self.ssl,
                                        server_hostname=self.host if self.ssl else None),
                self.timeout)
        except (TimeoutError, OSError) as exc:
            raise TurnClientError(0, f"cannot connect: {exc.__class__.__name__}: {exc}") from None
        self._task = asyncio.create_task(self._read_loop())

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl_mod.SSLError):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
            self._writer = None

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                head = await self._reader.readexactly(4)
                kind, n = struct.unpack("!HH", head)
                if kind & 0xC000 == 0x4000:  # ChannelData (padded to 4 over TCP): not used
                    await self._reader.readexactly(n + _pad(n))
                    continue
                msg = decode(head + await self._reader.readexactly(16 + n))
                if msg.cls == INDICATION and msg.method == DATA:
                    peer, data = msg.get(A_PEER), msg.get(A_DATA)
                    if peer is not None and data is not None:
                        self.received.put_nowait((xor_address(peer, msg.tid), data))
                    continue
                fut = self._waiting.pop(msg.tid, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (OSError, asyncio.IncompleteReadError, ssl_mod.SSLError, TurnClientError) as exc:
            self._lost = f"connection lost: {exc.__class__.__name__}"
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(TurnClientError(0, self._lost))
            self._waiting.clear()

    async def _transact(self, msg: Message) -> Message:
        if self._writer is None or self._lost:
            raise TurnClientError(0, self._lost or "not connected")
        if self.key is not None:
            msg.attrs += [(A_USERNAME, self.username.encode()), (A_REALM, self.realm or b""),
                          (A_NONCE, self.nonce or b"")]
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[msg.tid] = fut
        try:
            self._writer.write(encode(msg, self.key))
            await self._writer.drain()
            return await asyncio.wait_for(fut, self.timeout)
        except (OSError, ssl_mod.SSLError) as exc:
            raise TurnClientError(0, f"connection lost: {exc.__class__.__name__}") from None
        except TimeoutError:
            raise TurnClientError(0, "no answer") from None
        finally:
            self._waiting.pop(msg.tid, None)

    async def request(self, method: int,
                      attrs: Callable[[bytes], list[tuple[int, bytes]]]) -> Message:
        """Send a request whose attributes ``attrs(transaction_id)`` gives, authenticating (and
        trying again on 401 / stale nonce 438) as needed. Raises :class:`TurnClientError`."""
        for _ in range(3):
            msg = Message(method, REQUEST)
            msg.attrs = attrs(msg.tid)
            resp = await self._transact(msg)
            if resp.cls == SUCCESS:
                return resp
            code, reason = _error(resp)
            nonce = resp.get(A_NONCE)
            if nonce is not None and (code == 438 or (code == 401 and self.key is None)):
                self.nonce = nonce
                self.realm = resp.get(A_REALM) or self.realm
                raw = f"{self.username}:{(self.realm or b'').decode()}:{self.password}"
                self.key = hashlib.md5(raw.encode(), usedforsecurity=False).digest()
                continue
            raise TurnClientError(code, reason)
        raise TurnClientError(401, "Unauthorized")

    async def allocate(self, lifetime: int = 600) -> tuple[str, int]:
        """A UDP relay allocation; returns the relayed address."""
        resp = await self.request(ALLOCATE, lambda tid: [
            (A_TRANSPORT, bytes([UDP, 0, 0, 0])), (A_LIFETIME, struct.pack("!I", lifetime))])
        relayed, mapped = resp.get(A_RELAYED), resp.get(A_MAPPED)
        if relayed is None:
            raise TurnClientError(0, "allocation without XOR-RELAYED-ADDRESS")
        self.relayed = xor_address(relayed, resp.tid)
        self.mapped = xor_address(mapped, resp.tid) if mapped else None
        return self.relayed

    async def create_permission(self, host: str, port: int = 0) -> None:
        """Let ``host`` send to and receive from the allocation (403 when peer rules forbid)."""
        await self.request(CREATE_PERMISSION,
                           lambda tid: [(A_PEER, xor_encode(host, port, tid))])

    def send(self, host: str, port: int, data: bytes) -> None:
        """A Send indication to a peer that has a permission (nothing comes back)."""
        if self._writer is None:
            raise TurnClientError(0, "not connected")
        msg = Message(SEND, INDICATION)
        msg.attrs = [(A_PEER, xor_encode(host, port, msg.tid)), (A_DATA, data)]
        self._writer.write(encode(msg, None, fingerprint=False))

    async def drain(self) -> None:
        if self._writer is not None:
            await self._writer.drain()

    async def release(self) -> None:
        """Delete the allocation (Refresh with LIFETIME 0)."""
        if self.relayed is not None:
            await self.request(REFRESH, lambda tid: [(A_LIFETIME, struct.pack("!I", 0))])
            self.relayed = None


def _error(resp: Message) -> tuple[int, str]:
    raw = resp.get(A_ERROR)
    if raw is None or len(raw) < 4:
        return 0, "error response without ERROR-CODE"
    code = (raw[2] & 0x7) * 100 + raw[3]
    return code, raw[4:].decode("utf-8", "replace")


async def probe(host: str, port: int, username: str, password: str, *,
                ssl: ssl_mod.SSLContext | None = None, timeout: float = 2.0) -> tuple[str, int]:
    """Allocate, then release, one relay on the server: proof that it serves TURN. Returns the
    relayed address; raises :class:`TurnClientError`."""
    async with TurnClient(host, port, username, password, ssl=ssl, timeout=timeout) as c:
        relayed = await c.allocate(lifetime=60)
        with contextlib.suppress(TurnClientError):  # else it expires on its own
            await c.release()
        return relayed
