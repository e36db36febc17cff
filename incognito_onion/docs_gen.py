"""Renders ``docs/config-reference.md`` from the config schema (:mod:`incognito_onion.schema`),
so the reference cannot drift from the code: ``scripts/gen-config-reference`` writes it, and a
test regenerates it and compares.

    python -m incognito_onion.docs_gen            # print it
    python -m incognito_onion.docs_gen --write    # write docs/config-reference.md
    python -m incognito_onion.docs_gen --check    # exit 1 if the file is stale
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .schema import SECTION_DOCS, SETTINGS, Setting

REFERENCE_PATH = Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"

_KIND = {"int": "whole number", "float": "number", "bool": "true / false", "str": "text",
         "list": "list of text", "choice": "one of"}


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else str(x)


def _allowed(s: Setting) -> str:
    if s.kind == "choice":
        return ", ".join(f"`{c}`" for c in s.choices)
    if s.kind in ("int", "float") and s.min is not None:
        return f"{_num(s.min)}-{_num(s.max)}"
    if s.path in ("server.host",):
        return "IP address or host name"
    if s.path in ("turn.listen_ip", "turn.relay_ip"):
        return "IP address"
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_reference(settings: Sequence[Setting] = SETTINGS,
                     sections: dict[str, str] = SECTION_DOCS) -> str:
    """The whole Markdown page."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated from incognito_onion/schema.py by scripts/gen-config-reference; "
        "do not edit by hand. -->",
        "",
        "Every setting of `config.yaml`, its type, default and allowed values, and the "
        "environment variable that overrides it. Precedence: command-line flags > `INCOGNITO_*` "
        "environment > the config file > the defaults below. The file is `--config FILE`, "
        "else `$INCOGNITO_CONFIG`, else `$XDG_CONFIG_HOME/incognito-onion/config.yaml` if it "
        "exists. Environment values are text: `true`/`false` (or `1`/`0`, `yes`/`no`) for "
        "booleans, JSON (`[\"a\", \"b\"]`) or one item per line for lists.",
        "",
        "`incognito-onion config defaults` prints a commented `config.yaml` with every default; "
        "`incognito-onion config check` validates yours; `incognito-onion config show` prints "
        "the effective values (secrets hidden); `incognito-onion doctor` checks that `up` "
        "would work.",
        "",
    ]
    order: list[str] = []
    for s in settings:
        head = s.path.rpartition(".")[0]
        if head not in order:
            order.append(head)
    for head in order:
        title = f"`{head}`" if head else "Top level"
        out += [f"## {title}", ""]
        if head in sections:
            out += [sections[head], ""]
        out += ["| key | type | default | allowed | environment | what |",
                "|---|---|---|---|---|---|"]
        for s in settings:
            if s.path.rpartition(".")[0] != head:
                continue
            kind = _KIND.get(s.kind, s.kind)
            if s.kind == "choice":
                kind = "choice"
            doc = s.doc + (" *(secret: never shown)*" if s.secret else "")
            out.append(f"| `{s.path}` | {kind} | `{_value(s.default)}` | {_cell(_allowed(s))} "
                       f"| `{s.env}` | {_cell(doc)} |")
        out.append("")
    out += ["## Command-line flags of `incognito-onion up`", "",
            "They win over the environment and the file. `incognito-onion doctor` takes the "
            "same ones except `--qr` and `--qr-png`.", "",
            "| flag | what |", "|---|---|"]
    out += [f"| `{_cell(flag)}` | {_cell(text)} |" for flag, text in up_flags()]
    return "\n".join(out).rstrip("\n") + "\n"


def up_flags() -> list[tuple[str, str]]:
    """``(flag with its metavar, help)`` for every option of ``incognito-onion up``, read from
    the real parser."""
    import argparse

    from .cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    up = sub.choices["up"]
    out = []
    for action in up._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs != 0:
            if action.choices:
                flag += " " + "|".join(action.choices)
            else:
                flag += " " + (action.metavar or action.dest.upper())
        out.append((flag, action.help or ""))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = render_reference()
    if args == ["--write"]:
        REFERENCE_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {REFERENCE_PATH}", file=sys.stderr)
        return 0
    if args == ["--check"]:
        try:
            current = REFERENCE_PATH.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{REFERENCE_PATH} is stale: run scripts/gen-config-reference",
                  file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python -m incognito_onion.docs_gen [--write | --check]", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
