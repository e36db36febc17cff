"""The aiohttp application: pages, static files, /healthz, the socket.io endpoint, and the
security headers every response carries (strict CSP, no referrer, no sniffing, camera and
microphone for this origin only)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from .limits import TurnGate
from .signaling import Signaling
from .tasks import cancel_and_wait

log = logging.getLogger("incognito_onion.web")

#: new socket.io sessions started per turn of the event loop (limits.TurnGate). One: a
#: handshake costs ~0.8 ms of the loop, and under test_attack's storm of 107 connections at
#: once the honest p99 was 2.1-2.3 ms with one per turn (six runs) against 1.9-5.3 with four
#: (nine). Connections still open at one per turn, ~100/s when turns are 10 ms (saturation),
#: as many as limits.connects_per_second's default lets in anyway.
HANDSHAKES_PER_TURN = 1

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob:",
    "connect-src 'self'",
    "font-src 'self'",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": ", ".join([
        "camera=(self)", "microphone=(self)", "display-capture=(self)",
        "geolocation=()", "payment=()", "usb=()",
    ]),
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

ROOM_ROUTE = r"/r/{room:[A-Za-z0-9_-]{22}}"


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    response.headers.pop("Server", None)
    ctype = response.headers.get("Content-Type", "")
    if ctype.startswith(("text/html", "application/json")) or response.status >= 400:
        response.headers["Cache-Control"] = "no-store"
    else:
        response.headers.setdefault("Cache-Control", "no-cache")


def _page(static_dir: Path, name: str):
    async def handler(_request: web.Request) -> web.StreamResponse:
        path = static_dir / name
        if not path.is_file():
            raise web.HTTPServiceUnavailable(text=f"the web client is missing ({name})\n")
        return web.FileResponse(path, headers={"Content-Type": "text/html; charset=utf-8"})

    return handler


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@web.middleware
async def _plain_errors(request: web.Request, handler):
    """Errors are short text, never a stack trace or a server banner."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and not exc.text:
            exc.text = f"{exc.status} {exc.reason}\n"
        raise


def _session_rate(signaling: Signaling):
    """A request opening a new socket.io session (engine.io's handshake: no ``sid`` yet) over
    ``limits.connects_per_second`` gets 503 with Retry-After, before any session state exists;
    socket.io clients take that as a failed attempt and retry with their back-off."""

    gate = TurnGate(HANDSHAKES_PER_TURN)

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path.startswith("/socket.io/") and "sid" not in request.query:
            if not signaling.admit_session():
                raise web.HTTPServiceUnavailable(
                    text="server busy: too many new connections, retry in a moment\n",
                    headers={"Retry-After": "1"})
            await gate.wait()  # a storm of handshakes spread over turns of the loop
        return await handler(request)

    return middleware


def _sweeper(signaling: Signaling, every: float | None = None):
    """Free rooms whose grace period ran out, so memory follows the rooms in use; with several
    workers, also keep this worker's liveness in Redis and remove the peers of workers that
    stopped (announced as ``disconnected``)."""
    rooms = signaling.rooms
    every = every if every is not None else (2.0 if signaling.shared else 5.0)

    async def ctx(_app: web.Application):
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    expired, departures = await rooms.sweep()
                    await signaling.announce_departures(departures)
                    if expired:
                        log.info("expired empty rooms (%d open)", await rooms.count())
                except Exception as exc:  # redis restarting: try again at the next round
                    log.warning("room upkeep failed (%s)", type(exc).__name__)

        await signaling.start()
        task = asyncio.create_task(loop())
        yield
        await cancel_and_wait(task)
        await signaling.close()

    return ctx


def create_app(signaling: Signaling, static_dir: Path = STATIC_DIR) -> web.Application:
    """Build the application; socket.io is mounted at /socket.io/."""
    app = web.Application(middlewares=[_plain_errors, _session_rate(signaling)],
                          client_max_size=64 * 1024)
    app.on_response_prepare.append(_headers)
    app.cleanup_ctx.append(_sweeper(signaling))
    signaling.sio.attach(app)
    app.router.add_get("/", _page(static_dir, "index.html"))
    app.router.add_get(ROOM_ROUTE, _page(static_dir, "room.html"))
    app.router.add_get("/healthz", _healthz)
    if static_dir.is_dir():
        app.router.add_static("/static/", static_dir, follow_symlinks=False, show_index=False)
    app["signaling"] = signaling
    return app
