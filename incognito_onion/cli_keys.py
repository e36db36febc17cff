"""``incognito-onion keys add NAME | list | remove NAME``: participant keys for v3 onion client
authorization (tor.client_auth). The CLI calls :func:`register` on its subparsers; every leaf
sets ``args.handler`` (and ``args.func``), called as ``handler(args, cfg, state_dir)`` and
returning the exit code. A StateDirError is left to the CLI (exit code STATE).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import exitcodes
from .state import ensure_state_dir
from .tor import client_keys
from .tor.onion_key import OnionKeyError, load_or_create_key

EXIT_OK = exitcodes.OK
EXIT_ERROR = exitcodes.ERROR  # a key that exists already / does not exist / is damaged
EXIT_USAGE = exitcodes.CONFIG  # `keys` without a subcommand


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``keys`` with its three subcommands."""
    keys = subparsers.add_parser(
        "keys", help="participant keys for onion client authorization",
        description="Manage the keys participants need when tor.client_auth is on. Only the "
                    "public half is stored; the private half is printed once by `keys add`.")
    _with_common_flags(keys)
    usage = _usage(keys)
    keys.set_defaults(handler=usage, func=usage)
    sub = keys.add_subparsers(dest="keys_command", metavar="{add,list,remove}")
    add = sub.add_parser("add", help="make a key for a participant and print what they paste "
                                     "into Tor Browser")
    add.add_argument("name", help="who it is for: 1-32 letters, digits, - or _")
    lst = sub.add_parser("list", help="list the stored keys")
    rm = sub.add_parser("remove", help="delete a key (that person can no longer connect after "
                                       "the next restart)")
    rm.add_argument("name")
    for parser, handler in ((add, cmd_add), (lst, cmd_list), (rm, cmd_remove)):
        _with_common_flags(parser)
        parser.set_defaults(handler=handler, func=handler)
    return keys


def _with_common_flags(parser: argparse.ArgumentParser) -> None:
    """--config / --state-dir after the subcommand too, as everywhere in the CLI."""
    try:
        from .cli import _common
    except ImportError:  # used without the CLI (tests)
        return
    _common(parser, top=False)


def _usage(parser: argparse.ArgumentParser):
    def handler(args: argparse.Namespace, cfg: Any, state_dir: Path) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return handler


def _err(msg: str) -> int:
    print(f"incognito-onion: {msg}", file=sys.stderr)
    return EXIT_ERROR


def cmd_add(args: argparse.Namespace, cfg: Any, state_dir: Path) -> int:
    try:
        state_dir = ensure_state_dir(state_dir)
        key = client_keys.add(state_dir, args.name)
        persistent = bool(cfg.tor.persistent_key)
        # the line names the onion, so it exists only for a stable (persistent) address
        onion = load_or_create_key(state_dir, True) if persistent else None
    except (client_keys.ClientKeyError, OnionKeyError) as exc:
        return _err(str(exc))
    print(f"Added key {key.name!r}. Give {key.name} this (it is shown only once, not stored):")
    print()
    if onion is not None:
        print(f"  {key.browser_line(onion.service_id)}")
        print()
        print("Tor Browser asks for a key when it opens the onion: paste the part after the "
              "last ':'")
        print(f"  {key.private}")
    else:
        print(f"  {key.private}")
        print()
        print("Tor Browser asks for this key when it opens the onion. tor.persistent_key is "
              "off, so the onion address changes every run; turn it on for a stable address "
              "and a ready-made line (<onion-id>:descriptor:x25519:<key>).")
    if not cfg.tor.client_auth:
        print("note: tor.client_auth is off, so the onion is open to anyone; set it to true "
              "to require keys")
    print("A running `incognito-onion up` uses new keys after a restart.")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, cfg: Any, state_dir: Path) -> int:
    try:
        keys = client_keys.list_keys(state_dir)
    except client_keys.ClientKeyError as exc:
        return _err(str(exc))
    if not keys:
        print("no participant keys (add one with `incognito-onion keys add NAME`)")
        return EXIT_OK
    width = max(len(k.name) for k in keys)
    for k in keys:
        print(f"{k.name:<{width}}  x25519 public key {k.public[:12]}…")
    state = "on" if cfg.tor.client_auth else "off (the onion is open to anyone)"
    print(f"{len(keys)} key{'s' if len(keys) != 1 else ''}; tor.client_auth is {state}")
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, cfg: Any, state_dir: Path) -> int:
    try:
        removed = client_keys.remove(state_dir, args.name)
    except (client_keys.ClientKeyError, OSError) as exc:
        return _err(str(exc))
    if not removed:
        return _err(f"no key named {args.name!r} (see `incognito-onion keys list`)")
    print(f"removed key {args.name!r}; it stops working when `incognito-onion up` restarts")
    return EXIT_OK
