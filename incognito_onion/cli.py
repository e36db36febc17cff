"""The ``incognito-onion`` command. Parses flags, loads config, and hands over to the module
that does the work. Every failure ends in one clear line on stderr and a distinct exit code
(see :mod:`exitcodes`), never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, exitcodes, logs, runtime
from .config import Config, ConfigError, load
from .schema import BY_PATH, render_yaml
from .state import StateDirError, default_state_dir, ensure_state_dir


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # The same flags work before or after the subcommand; after it wins.
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--config", metavar="FILE", type=Path, default=default,
                        help="config file (default: $INCOGNITO_CONFIG, else "
                             "$XDG_CONFIG_HOME/incognito-onion/config.yaml if present)")
    parser.add_argument("--state-dir", metavar="DIR", type=Path, default=default,
                        help="where keys and secrets are kept "
                             "(default: $XDG_STATE_HOME/incognito-onion)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incognito-onion",
        description="An end-to-end encrypted video conference, published as a Tor onion "
                    "service with one command.",
    )
    parser.add_argument("--version", action="version", version=f"incognito-onion {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    up = sub.add_parser("up", help="start the server (and tor, TURN) and print a room link",
                        description="Start the conference server, publish it, open a room "
                                    "and print its link. Runs until Ctrl-C.")
    _common(up, top=False)
    up.add_argument("--no-tor", action="store_true",
                    help="do not publish through tor: serve on --host only")
    up.add_argument("--no-turn", action="store_true",
                    help="do not start coturn (browsers then connect directly)")
    up.add_argument("--host", metavar="H", help="address to bind the web server to "
                                                "(server.host)")
    up.add_argument("--port", metavar="P", help="web server port (server.port)")
    up.add_argument("--tor-control", metavar="HOST:PORT|SOCKET",
                    help="attach to a running tor instead of launching one (tor.control)")
    up.add_argument("--tor-password", metavar="PW",
                    help="control port password for --tor-control (tor.control_password)")
    up.add_argument("--qr", choices=("auto", "always", "never"), default="auto",
                    help="print a QR code of the link (auto: when output is a terminal)")
    up.add_argument("--qr-png", metavar="FILE", type=Path, help="also save the QR code as PNG")

    cfg = sub.add_parser("config", help="show or check configuration")
    _common(cfg, top=False)
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    cfg_sub.add_parser("defaults", help="print config.yaml with every default")
    for name, text in (("check", "validate the config file and environment"),
                       ("show", "print the effective settings (secrets hidden)")):
        _common(cfg_sub.add_parser(name, help=text), top=False)

    # Subcommands that live beside the module they drive: each exposes register(subparsers)
    # and sets args.handler(args, cfg, state_dir) -> exit code.
    import importlib

    for name in ("cli_keys", "doctor"):
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as exc:  # a part not built yet in this checkout
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "no_tor", False):
        out["tor.enabled"] = False
    if getattr(args, "no_turn", False):
        out["turn.enabled"] = False
    if getattr(args, "host", None) is not None:
        out["server.host"] = args.host
    if getattr(args, "port", None) is not None:
        port: Any = args.port
        with contextlib.suppress(ValueError):
            port = int(port)
        out["server.port"] = port
    if getattr(args, "tor_control", None) is not None:
        out["tor.control"] = args.tor_control
    if getattr(args, "tor_password", None) is not None:
        out["tor.control_password"] = args.tor_password
    if getattr(args, "state_dir", None) is not None:
        out["state_dir"] = str(args.state_dir)
    return out


def _err(message: str) -> None:
    print(f"incognito-onion: {message}", file=sys.stderr, flush=True)


def _state_dir(cfg: Config) -> Path:
    return ensure_state_dir(Path(cfg.state_dir) if cfg.state_dir else default_state_dir())


def _config_command(args: argparse.Namespace, cfg: Config) -> int:
    if args.config_command == "check":
        where = cfg.source or "built-in defaults (no config file)"
        print(f"ok: {where}")
    elif args.config_command == "show":
        for path, value in cfg.as_dict().items():
            shown = "(hidden)" if BY_PATH[path].secret and value else value
            print(f"{path} = {shown!r}")
    return exitcodes.OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return exitcodes.OK
    if args.command == "config" and args.config_command == "defaults":
        sys.stdout.write(render_yaml())
        return exitcodes.OK
    try:
        cfg = load(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        for line in exc.problems:
            _err(line)
        return exitcodes.CONFIG
    logs.setup(cfg.server.log_level)
    try:
        if args.command == "config":
            return _config_command(args, cfg)
        state_dir = _state_dir(cfg)
        if args.command == "up":
            return _up(args, cfg, state_dir)
        handler = getattr(args, "handler", None)
        if handler is not None:
            return int(handler(args, cfg, state_dir))
    except StateDirError as exc:
        _err(str(exc))
        return exitcodes.STATE
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    parser.print_help()
    return exitcodes.ERROR


def _up(args: argparse.Namespace, cfg: Config, state_dir: Path) -> int:
    from .up import UpError, UpOptions, serve

    opts = UpOptions(qr=args.qr, qr_png=args.qr_png)
    try:
        return runtime.run(serve(cfg, state_dir, opts))
    except UpError as exc:
        _err(str(exc))
        return exc.code
    except Exception as exc:  # a bug: say so in one line, no traceback
        _err(f"unexpected failure ({type(exc).__name__}: {logs.redact(str(exc))}); "
             f"please report it")
        return exitcodes.ERROR


if __name__ == "__main__":
    sys.exit(main())
