"""Publish one ephemeral ED25519-V3 onion service and wait until every HSDir has it.

The ``ADD_ONION`` command is written here (not by stem, whose ``create_ephemeral_hidden_service``
takes one client-auth key and returns at the first HSDir): several ``ClientAuthV3=`` keys,
``PoWDefensesEnabled=1`` when tor supports it (probed: version, and a retry without it if tor
still refuses), ``MaxStreams=``. We then follow ``HS_DESC`` events: every ``UPLOAD`` to an HSDir
must end in ``UPLOADED`` or ``FAILED`` before the onion counts as published (a client asking a
slower HSDir a moment later would otherwise get "descriptor not found").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import stem
import stem.control
import stem.version
from stem.control import EventType

from .control import MAX_STREAMS_VERSION, POW_VERSION, Control
from .errors import TorPublishFailed, TorPublishTimeout
from .onion_key import OnionKey


@dataclass(frozen=True)
class Features:
    """What the tor we talk to can do with ADD_ONION."""

    version: str
    pow: bool
    max_streams: bool
    pow_reason: str = ""  # why PoW is unavailable, for the user


def probe_features(version: stem.version.Version, pow_module: bool | None = None) -> Features:
    """Decide from tor's version (and, for a tor we launched, ``--list-modules``)."""
    if version < POW_VERSION:
        pow_ok, why = False, (f"tor {version} cannot enable the proof-of-work DoS defence on an "
                              f"ADD_ONION service (needs tor {POW_VERSION} or newer)")
    elif pow_module is False:
        pow_ok, why = False, (f"tor {version} was built without the proof-of-work module "
                              f"(tor --list-modules: pow: no)")
    else:
        pow_ok, why = True, ""
    return Features(str(version), pow_ok, version >= MAX_STREAMS_VERSION, why)


Ports = Mapping[int, tuple[str, int]]


def _target(port: int, target: tuple[str, int]) -> str:
    host, tport = target
    if not (isinstance(port, int) and 1 <= port <= 65535 and 1 <= int(tport) <= 65535):
        raise ValueError(f"bad onion port mapping {port} -> {target!r}")
    if any(c.isspace() or c == "," for c in host):
        raise ValueError(f"bad onion target host {host!r}")
    return f"{port},{host}:{int(tport)}"


def add_onion_command(key: OnionKey, ports: Ports, *, client_keys: Iterable[str] = (),
                      pow_defense: bool = False, max_streams: int = 0) -> str:
    """The ADD_ONION line (control-spec order: key, Flags, MaxStreams, PoW, Port, ClientAuthV3).
    The key stays ours (we made it), so tor need not return it: DiscardPK."""
    if not ports:
        raise ValueError("no ports to publish")
    auth = list(client_keys)
    flags = ["DiscardPK"]
    if auth:
        flags.append("V3Auth")
    if max_streams:
        flags.append("MaxStreamsCloseCircuit")
    parts = ["ADD_ONION", key.to_tor(), "Flags=" + ",".join(flags)]
    if max_streams:
        parts.append(f"MaxStreams={int(max_streams)}")
    if pow_defense:
        parts.append("PoWDefensesEnabled=1")
    parts += [f"Port={_target(p, t)}" for p, t in sorted(ports.items())]
    parts += [f"ClientAuthV3={k}" for k in auth]
    return " ".join(parts)


@dataclass
class Published:
    """An onion tor is serving."""

    service_id: str
    seconds: float  # from ADD_ONION to the last HSDir answer
    hsdirs_uploaded: int
    hsdirs_failed: int
    complete: bool  # every HSDir answered (False: some still pending at the timeout)
    pow: bool
    notes: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.service_id + ".onion"


def _reply_text(response: stem.response.ControlMessage) -> tuple[str, str]:
    """(code, text) of the last line of an error reply."""
    code, _, text = response.content()[-1]
    return code, text


async def publish(
    ctl: Control,
    key: OnionKey,
    ports: Ports,
    *,
    timeout: float,
    features: Features,
    client_keys: Iterable[str] = (),
    pow_defense: bool = True,
    max_streams: int = 0,
) -> Published:
    """ADD_ONION and wait for every HSDir. Raises :class:`TorPublishFailed` when tor refuses,
    :class:`TorPublishTimeout` when no HSDir accepted the descriptor in ``timeout`` seconds,
    :class:`TorDied` when tor goes away meanwhile. The service lives as long as ``ctl``."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    notes: list[str] = []
    auth = list(client_keys)
    use_pow = pow_defense and features.pow
    if pow_defense and not features.pow:
        notes.append(features.pow_reason)
    if max_streams and not features.max_streams:
        notes.append(f"tor {features.version} cannot limit streams per circuit (MaxStreams)")
        max_streams = 0

    def on_event(event: stem.response.events.HSDescEvent) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    await ctl.call("subscribing to HS_DESC events", ctl.controller.add_event_listener,
                   on_event, EventType.HS_DESC)
    try:
        started = time.monotonic()
        while True:
            command = add_onion_command(key, ports, client_keys=auth, pow_defense=use_pow,
                                        max_streams=max_streams)
            response = await ctl.msg("creating the onion service", command)
            if response.is_ok():
                break
            code, text = _reply_text(response)
            if use_pow and "pow" in text.lower():
                use_pow = False  # this tor's ADD_ONION does not know the PoW keywords
                notes.append(f"tor {features.version} refused the proof-of-work DoS defence "
                             f"({text}); publishing without it")
                continue
            if "collision" in text.lower():
                text += " (this address is already published by this tor: is another " \
                        "incognito-onion running with the same key?)"
            raise TorPublishFailed(f"tor refused to create the onion service: {code} {text}")
        service_id = next((line.partition("=")[2] for _, _, line in response.content()
                           if line.startswith("ServiceID=")), "")
        if service_id != key.service_id:
            raise TorPublishFailed(f"tor published an unexpected address for our key "
                                   f"({service_id!r})")
        return await _await_hsdirs(ctl, events, key, started, timeout, use_pow, notes)
    finally:
        if ctl.is_alive():
            with contextlib.suppress(Exception):  # tor going away is reported elsewhere
                await ctl.call("unsubscribing from HS_DESC events",
                               ctl.controller.remove_event_listener, on_event, timeout=10)


async def _await_hsdirs(ctl: Control, events: asyncio.Queue, key: OnionKey, started: float,
                        timeout: float, pow_on: bool, notes: list[str]) -> Published:
    service_id = key.service_id
    pending: Counter[str] = Counter()
    uploaded = failed = 0
    reasons: list[str] = []
    deadline = started + timeout
    last_answer = started
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            event = await asyncio.wait_for(events.get(), min(remaining, 0.5))
        except TimeoutError:
            if not ctl.is_alive():
                raise ctl.died("publishing the onion service") from None
            continue
        # old tors leave the address out of UPLOADED/FAILED: match those by directory
        if event.address != service_id and (
                event.action == stem.HSDescAction.UPLOAD or event.address not in (None,
                                                                                  "UNKNOWN")):
            continue
        fp = event.directory_fingerprint or event.directory or "?"
        if event.action == stem.HSDescAction.UPLOAD:
            pending[fp] += 1
        elif event.action in (stem.HSDescAction.UPLOADED, stem.HSDescAction.FAILED):
            if pending[fp] <= 0:
                continue
            pending[fp] -= 1
            last_answer = time.monotonic()
            if event.action == stem.HSDescAction.UPLOADED:
                uploaded += 1
            else:
                failed += 1
                reasons.append(str(event.reason or "unknown reason"))
        if uploaded and not +pending:
            return Published(service_id, last_answer - started, uploaded, failed, True, pow_on,
                             notes)
    if uploaded:
        notes.append(f"{sum(pending.values())} onion directories had not answered after "
                     f"{timeout:g}s; some visitors may need a retry")
        return Published(service_id, time.monotonic() - started, uploaded, failed, False,
                         pow_on, notes)
    why = ""
    if failed:
        why = f" ({failed} uploads failed: {', '.join(sorted(set(reasons)))})"
    elif not pending:
        why = " (tor has not tried to upload it: is it connected to the Tor network?)"
    raise TorPublishTimeout(f"the onion service was not published within {timeout:g}s{why}; "
                            f"check tor's connectivity or raise tor.publish_timeout")


async def unpublish(ctl: Control, service_id: str) -> bool:
    """DEL_ONION; False if tor had no such service (or is gone)."""
    if not ctl.is_alive():
        return False
    try:
        return bool(await ctl.call("removing the onion service",
                                   ctl.controller.remove_ephemeral_hidden_service, service_id,
                                   timeout=10))
    except Exception:
        return False
