"""Relative paths under /input and /output: only canonical, contained paths pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gantry.paths import (
    MAX_RELATIVE_PATH,
    clear_folder,
    remove_tree,
    safe_join,
    validate_relative_path,
)


@pytest.mark.parametrize(
    "path",
    ["result.json", "images/ct", "nested/dir/metrics.json", "a-b_c.d/e.f", "x" * 255],
)
def test_safe_paths_pass_unchanged(path: str) -> None:
    assert validate_relative_path(path) == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "non-empty"),
        ("/etc/passwd", "relative"),
        ("../secret.json", r"'\.\.'"),
        ("a/../../b.json", r"'\.\.'"),
        ("a/./b.json", r"'\.\.'"),
        ("a//b.json", "empty segments"),
        ("dir/", "end with '/'"),
        ("name with space.json", "may only contain"),
        ("back\\slash.json", "may only contain"),
        ("nul\x00.json", "may only contain"),
        ("ünïcode.json", "may only contain"),
        ("x" * (MAX_RELATIVE_PATH + 1), "at most"),
        ("images/0b1e0c2a-1d2e-4f3a-9b8c-7d6e5f4a3b2c.mha", "UUID"),
        ("inputs.json", "reserved"),
    ],
)
def test_unsafe_paths_are_rejected_with_a_reason(path: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_relative_path(path)


def test_platform_built_paths_may_hold_uuids() -> None:
    path = "images/ct/0b1e0c2a-1d2e-4f3a-9b8c-7d6e5f4a3b2c.mha"
    assert validate_relative_path(path, allow_nested_json=True) == path
    # ... but never escape.
    with pytest.raises(ValueError):
        validate_relative_path("../" + path, allow_nested_json=True)


def test_safe_join_stays_under_the_root(tmp_path) -> None:
    root = str(tmp_path / "input")
    assert safe_join(root, "images/ct/a.mha") == f"{root}/images/ct/a.mha"
    assert safe_join(root + "/", "a.json") == f"{root}/a.json"


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "../input-sibling/x"])
def test_safe_join_refuses_to_escape(tmp_path, path: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        safe_join(str(tmp_path / "input"), path)


def test_remove_tree_removes_any_depth_and_follows_no_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "file").write_text("not removed")
    root = tmp_path / "root"
    root.mkdir()
    # Deeper than a path may be (PATH_MAX) and than Python recurses.
    monkeypatch.chdir(root)
    for _ in range(3000):
        os.symlink(kept, "link")
        Path("file").write_text("x")
        os.mkdir("d")
        os.chdir("d")
    monkeypatch.chdir(tmp_path)

    remove_tree(root)

    assert not root.exists()
    assert [p.name for p in kept.iterdir()] == ["file"]


def test_clear_folder_empties_the_folder_only(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").write_text("x")
    (tmp_path / "f").write_text("x")

    clear_folder(tmp_path)

    assert list(tmp_path.iterdir()) == []
