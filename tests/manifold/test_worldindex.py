"""The world index: an incremental content digest that must always equal a fresh full scan."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bloodwork.manifold.worldindex import WorldIndex


def fresh(root: Path) -> str:
    return WorldIndex(root, use_inotify=False).digest()


def sh(root: Path, script: str) -> None:
    subprocess.run(["sh", "-c", script], cwd=root, check=True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "pkg").mkdir(parents=True)
    (ws / "pkg" / "mod.py").write_text("x = 1\n")
    (ws / "README").write_text("hello\n")
    return ws


@pytest.mark.parametrize("use_inotify", [True, False])
def test_digest_follows_every_kind_of_change_and_matches_a_fresh_scan(root: Path, use_inotify: bool):
    index = WorldIndex(root, use_inotify=use_inotify)
    assert index.kind == ("inotify" if use_inotify else "scan")
    start = index.digest()
    assert start == fresh(root)
    steps = [
        lambda: (root / "pkg" / "mod.py").write_text("x = 2\n"),  # content
        lambda: sh(root, "mkdir -p build/a/b && echo 1 > build/a/b/f && echo 2 > build/g"),  # a new tree
        lambda: sh(root, "mv build moved"),  # a directory renamed with its files
        lambda: sh(root, "rm -rf moved"),  # ... and removed
        lambda: os.chmod(root / "README", 0o600),  # permissions
        lambda: os.symlink("README", root / "link"),  # a link
        lambda: sh(root, "echo tmp > t && mv t pkg/renamed.py"),  # a file moved in
    ]
    digests = [start]
    for step in steps:
        step()
        now = index.digest()
        assert now == fresh(root), step
        assert now != digests[-1], step
        digests.append(now)


def test_digest_is_content_addressed_and_ignores_caches_and_timestamps(root: Path):
    index = WorldIndex(root)
    start = index.digest()
    (root / "README").write_text("changed\n")
    assert index.digest() != start
    (root / "README").write_text("hello\n")  # back to the old content: back to the old digest
    assert index.digest() == start
    os.utime(root / "README", (1, 1))
    sh(root, "mkdir -p __pycache__ .pytest_cache pkg/__pycache__ .git && touch __pycache__/a.pyc "
             ".pytest_cache/v pkg/__pycache__/m.pyc .git/index")
    assert index.digest() == start


def test_an_event_queue_overflow_falls_back_to_a_rescan(root: Path, monkeypatch: pytest.MonkeyPatch):
    index = WorldIndex(root)
    rescans = []
    original = WorldIndex._rescan
    monkeypatch.setattr(WorldIndex, "_rescan", lambda self: (rescans.append(1), original(self)))
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    # more events than the queue holds, all in directories watched before they filled
    sh(root, f"i=0; while [ $i -lt {limit // 2 + 100} ]; do echo $i > pkg/f$i; i=$((i+1)); done")
    assert index.digest() == fresh(root)
    assert rescans and index.files() == limit // 2 + 100 + 2
