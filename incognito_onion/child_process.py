"""Helpers for the daemons we supervise (coturn, redis): one place for how a child is tied
to our life and how its end is described."""

from __future__ import annotations

import shutil


def pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM --`` (util-linux), to put before a daemon's argv: the kernel
    sends it SIGTERM when we die, even by SIGKILL, when no cleanup of ours runs. Empty where
    setpriv is missing (the daemon then outlives a SIGKILL of ours)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []
