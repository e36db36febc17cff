"""The state directory: where keys and secrets live (onion key, TURN secret, client-auth keys).

Private by construction: the directory is 0700 and every file written through
:func:`write_private` is 0600 from the moment it exists (no window where another user could read
it), replaced atomically so a crash never leaves half a key.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path


class StateDirError(Exception):
    """The state directory cannot be made or used; the message says what to do."""


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/incognito-onion``, else ``~/.local/state/incognito-onion``."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "incognito-onion"


def ensure_state_dir(path: Path | str) -> Path:
    """Create the directory (0700) if needed and check we can write to it."""
    p = Path(path).expanduser()
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        if p.stat().st_mode & 0o077:
            p.chmod(0o700)
        probe = tempfile.NamedTemporaryFile(dir=p, prefix=".probe-", delete=True)  # noqa: SIM115
        probe.close()
    except OSError as exc:
        raise StateDirError(
            f"state dir {p}: cannot use it ({exc.strerror or exc}); pick another with "
            f"--state-dir or fix its permissions"
        ) from None
    return p


def write_private(path: Path | str, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` as a 0600 file, atomically."""
    p = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return p


def read_private(path: Path | str) -> bytes | None:
    """Read a secret file, or None if absent. Refuses (and says why) a file others can read."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        return None
    if st.st_mode & 0o077:
        raise StateDirError(
            f"{p}: readable by other users (mode {oct(st.st_mode & 0o777)}); "
            f"run: chmod 600 {p}"
        )
    return p.read_bytes()
