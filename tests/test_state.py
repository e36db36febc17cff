import os
import stat

import pytest

from incognito_onion.state import (
    StateDirError,
    default_state_dir,
    ensure_state_dir,
    read_private,
    write_private,
)


def mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_state_dir_is_private_and_xdg(tmp_path):
    assert default_state_dir({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "incognito-onion"
    d = ensure_state_dir(tmp_path / "a" / "b")
    assert mode(d) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    ensure_state_dir(loose)
    assert mode(loose) == 0o700


def test_private_files_are_0600_and_atomic(tmp_path):
    old = os.umask(0)
    try:
        p = write_private(tmp_path / "secret", "s3cret")
    finally:
        os.umask(old)
    assert mode(p) == 0o600 and read_private(p) == b"s3cret"
    write_private(p, b"new")
    assert read_private(p) == b"new" and mode(p) == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["secret"]  # no temp files left
    assert read_private(tmp_path / "absent") is None


def test_readable_secret_is_refused_with_the_fix(tmp_path):
    p = tmp_path / "key"
    p.write_text("x")
    p.chmod(0o644)
    with pytest.raises(StateDirError, match="chmod 600"):
        read_private(p)


def test_state_dir_under_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    with pytest.raises(StateDirError, match="--state-dir"):
        ensure_state_dir(f / "x")
