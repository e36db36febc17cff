"""Process-wide runtime tuning of a server process (issue 8: relay throughput and latency).

Three standard, independent knobs, each a no-op when its package is missing:

- :func:`run`: runs the server's coroutine on uvloop's event loop (libuv, in C: tasks, futures,
  timers and socket writes cost a fraction of the pure-Python selector loop's, which was ~60 %
  of the server's CPU under relay load);
- :func:`json_module`: an orjson-backed codec for python-socketio/engine.io (``json=`` of
  ``AsyncServer``), with the exact stdlib behaviour as the fallback for anything orjson refuses;
- :func:`tune_gc`: moves everything alive after start-up out of the collector's sight
  (``gc.freeze``) and makes young collections rarer, so the full collections that walked
  every connection's objects (60-117 ms pauses, the p99 tail) become short and rare.

``INCOGNITO_RUNTIME_OFF`` (comma-separated: ``uvloop``, ``orjson``, ``gc``, and ``fastemit``,
``fastws``, ``coalesce``, ``earlyflush``, ``joinwindow``, ``batchread``, ``service``,
``syncread`` of :mod:`incognito_onion.fastpath`, ``fastevent`` of
``signaling.GuardedServer._plain_event``, ``quickrelay`` of ``signaling.Signaling.quick_event``,
or ``all``) turns knobs off, e.g. to compare with
and without in ``bench/relay_load.py --env``. The variable is not a setting of the config
schema (an unknown ``INCOGNITO_*`` name is ignored there): it is a switch for measuring and
for ruling these out when chasing a bug.
"""

from __future__ import annotations

import asyncio
import gc
import json as _stdlib_json
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

OFF_ENV = "INCOGNITO_RUNTIME_OFF"
KNOBS = frozenset({"uvloop", "orjson", "gc", "fastemit", "fastws", "fastevent", "coalesce",
                   "earlyflush", "joinwindow", "batchread", "service", "syncread",
                   "quickrelay"})

# gc.set_threshold after tune_gc's freeze: a young collection every 50 000 net allocations of
# container objects instead of 700 (a relayed message allocates a few dozen; the young
# generation's survivors are then walked ~70x less often), the older two as CPython's defaults.
GC_THRESHOLDS = (50_000, 20, 10)

T = TypeVar("T")


def disabled(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The knobs ``INCOGNITO_RUNTIME_OFF`` turns off (``all``: every one)."""
    raw = (os.environ if env is None else env).get(OFF_ENV, "")
    names = {n.strip().lower() for n in raw.split(",") if n.strip()}
    return KNOBS if "all" in names else frozenset(names & KNOBS)


def enabled(knob: str, env: Mapping[str, str] | None = None) -> bool:
    if knob not in KNOBS:
        raise ValueError(f"unknown runtime knob {knob!r}")
    return knob not in disabled(env)


# -- event loop ----------------------------------------------------------------------------------

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(env: Mapping[str, str] | None = None) -> LoopFactory | None:
    """uvloop's ``new_event_loop`` when it is installed and not turned off, else ``None``
    (asyncio's default loop)."""
    if not enabled("uvloop", env):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop runs (the running one by default)."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], env: Mapping[str, str] | None = None) -> T:
    """``asyncio.run(main)``, on uvloop's loop when :func:`loop_factory` gives one. Nothing
    global is changed (no event loop policy): only this run's loop is uvloop's."""
    with asyncio.Runner(loop_factory=loop_factory(env)) as runner:
        return runner.run(main)


# -- JSON ----------------------------------------------------------------------------------------

def _safe_int(text: str) -> int:
    # engine.io's own guard: int() of a huge digit string is quadratic
    if len(text) > 100:
        raise ValueError("Integer is too large")
    return int(text)


class _StdlibCodec:
    """What python-socketio/engine.io use by default (``engineio.json``): stdlib json, with
    integers of more than 100 digits refused."""

    name = "json"
    JSONDecodeError = _stdlib_json.JSONDecodeError

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        return _stdlib_json.dumps(obj, **kwargs)

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_int", _safe_int)
        return _stdlib_json.loads(text, **kwargs)


class _OrjsonCodec:
    """orjson behind the ``dumps``/``loads`` the socket.io libraries call.

    ``dumps`` returns ``str`` (the libraries concatenate it to the packet type) and ignores
    ``separators`` (orjson's output is always compact, as the libraries ask); non-ASCII text goes
    out as UTF-8 instead of ``\\uXXXX`` escapes, the same JSON; NaN and infinities go out as
    ``null`` where the stdlib wrote ``NaN``/``Infinity``, which no JSON parser (a browser's
    ``JSON.parse``) takes, and which the server never sends. Whatever orjson refuses and the
    stdlib takes (lone surrogate escapes, integers beyond 64 bits, NaN/Infinity, other
    arguments) goes to :class:`_StdlibCodec`, so a malformed packet still raises ``ValueError``
    from the stdlib. One difference in what ``loads`` gives: an integer literal of 20+ digits
    (past 64 bits) comes back as a float, where the stdlib gave an int, or refused the packet
    past 100 digits (its guard against quadratic ``int()``, which orjson does not have). The
    protocol takes no such integer (``seq`` must be an int up to 2**53; ``ts`` any finite
    number), so the only effect is that a media ``ts`` of 101-308 digits is taken as a float
    instead of refusing the packet. (A check for long digit runs before parsing cost 12x
    orjson's parse itself.)"""

    name = "orjson"
    JSONDecodeError = _stdlib_json.JSONDecodeError

    def __init__(self, orjson: Any):
        self._dumps = orjson.dumps
        self._loads = orjson.loads
        self._errors = (orjson.JSONEncodeError, TypeError, OverflowError)

    def dumps(self, obj: Any, separators: Any = None, **kwargs: Any) -> str:
        if not kwargs:
            try:
                return self._dumps(obj).decode("utf-8")
            except self._errors:
                pass
        kwargs.setdefault("separators", separators or (",", ":"))
        return _StdlibCodec.dumps(obj, **kwargs)

    def dumps_plain(self, obj: Any) -> str | None:
        """``dumps(obj)`` by orjson alone, or None where orjson refuses it: bytes anywhere
        (orjson raises at the first, so a caller that must send bytes another way learns it
        without walking ``obj`` first), or what only the stdlib writes."""
        try:
            return self._dumps(obj).decode("utf-8")
        except self._errors:
            return None

    def loads(self, text: str | bytes, **kwargs: Any) -> Any:
        if not kwargs:
            try:
                return self._loads(text)
            except ValueError:  # orjson.JSONDecodeError: the stdlib may still take it
                pass
        return _StdlibCodec.loads(text, **kwargs)


def json_module(env: Mapping[str, str] | None = None) -> Any:
    """The codec to give ``socketio.AsyncServer(json=...)``: orjson-backed when orjson is
    installed and not turned off, else the libraries' default behaviour."""
    if enabled("orjson", env):
        try:
            import orjson
        except ImportError:
            pass
        else:
            return _OrjsonCodec(orjson)
    return _StdlibCodec()


# -- garbage collector ---------------------------------------------------------------------------

def tune_gc(env: Mapping[str, str] | None = None,
            thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> bool:
    """Once the server is up: collect, freeze what survived (modules, classes, the app: alive
    for good, never garbage) so no collection walks it again, and raise the young generation's
    threshold. Returns whether it did anything. Cycles made after this are still collected."""
    if not enabled("gc", env):
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    return True
