"""The embedded server's binaries when run as root: the server's OS user must execute them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mv_orchestration.demo.embedded import _can_run, _server_os_user, _usable_bindir, find_bindir


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another OS user")
def test_binaries_in_a_folder_closed_to_the_server_user_are_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    shutil.copytree(find_bindir().parent, closed / "pg", symlinks=True)
    monkeypatch.setenv("PG_BINDIR", str(closed / "pg" / "bin"))
    user = _server_os_user()
    assert user is not None
    assert not _can_run(closed / "pg" / "bin", user)  # refused, not an exception
    bindir = _usable_bindir(user)
    assert not bindir.is_relative_to(closed)
    assert _can_run(bindir, user)
