"""The hostile-input corpus: every case asserts a promised outcome.

A refused input gets exactly one line on stderr (``condense CMD: error: ...`` naming the
problem), a non-zero exit, no traceback and no ``internal error``; what was written before
stays intact; nothing is read that the user did not name; no attacker code runs.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli(capsys, *argv: str) -> Result:
    """Run ``condense --no-progress ARGV`` in this process."""
    from condense.cli.main import main

    capsys.readouterr()
    rc = main(["--no-progress", *map(str, argv)])
    out, err = capsys.readouterr()
    return Result(rc, out, err)


def cli_proc(*argv: str, timeout: float = 120, cwd: str | os.PathLike | None = None,
             env: dict[str, str] | None = None) -> Result:
    """Run ``python -m condense --no-progress ARGV`` in a child process (for hangs, kills, memory)."""
    p = subprocess.run([sys.executable, "-m", "condense", "--no-progress", *map(str, argv)], capture_output=True,
                       text=True, timeout=timeout, cwd=cwd,
                       env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    return Result(p.returncode, p.stdout, p.stderr)


def refused(res: Result, *needles: str) -> str:
    """Assert the promised refusal: non-zero exit, one stderr line saying ``error:`` and naming each
    needle (case-insensitive), no traceback, no internal error. Returns the line."""
    assert res.rc not in (0, None), f"exit 0 for a refused input; stderr: {res.err!r}"
    assert res.rc > 0, f"killed by signal {-res.rc}; stderr: {res.err[-2000:]!r}"
    lines = res.err_lines
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {res.err[-3000:]!r}"
    line = lines[0]
    assert "error:" in line and "internal error" not in line and "Traceback" not in line, line
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not named in: {line}"
    return line


def digest(*paths: str | os.PathLike) -> dict[str, str | None]:
    """SHA-256 of each file under ``paths`` (folders recursively; None: missing): compare two
    digests to assert nothing written before was changed or lost."""
    out: dict[str, str | None] = {}
    for p in map(Path, paths):
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
    return out


def temp_leftovers(folder: str | os.PathLike) -> list[str]:
    """Temporary files a write left behind under ``folder``."""
    return sorted(str(p) for p in Path(folder).rglob("*") if ".tmp" in p.name)


@pytest.fixture(scope="session")
def toy_set(tmp_path_factory) -> Path:
    """A small valid set file (toy, 2 images per class, hard labels); copy it before changing it."""
    from condense.data import load_dataset
    from condense.synset import real_subset

    ds = load_dataset("toy")
    idx = torch.cat([torch.nonzero(ds.y_train == c).flatten()[:2] for c in range(ds.info.num_classes)])
    path = tmp_path_factory.mktemp("sets") / "toy.h5"
    real_subset(ds, idx, "random", config={"arch": "convnet"}).save(path)
    return path


@pytest.fixture(scope="session")
def toy_teacher(tmp_path_factory) -> Path:
    """A teacher file (a tiny untrained ConvNet on toy); copy it before changing it."""
    from condense.data import load_dataset
    from condense.labels.teacher_file import TeacherFile
    from condense.nets import build_net

    ds = load_dataset("toy")
    c, h, w = ds.info.channels, *ds.info.image_size
    arch = "convnet:width=8"
    net = build_net(arch, c, ds.info.num_classes, (h, w))
    path = tmp_path_factory.mktemp("teachers") / "teacher.h5"
    TeacherFile(net=net, arch=arch, dataset="toy", num_classes=ds.info.num_classes, image_shape=(c, h, w),
                class_names=tuple(ds.info.class_names or ()), transform=ds.transform, accuracy=float("nan")).save(path)
    return path


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    if sys.platform != "linux":
        return "tmpfs is Linux-only"
    return None


@contextmanager
def _mounted(argv: list[str], folder: Path, what: str) -> Iterator[Path]:
    """``folder`` with ``mount ARGV folder`` over it for the block (skipped when it cannot be mounted)."""
    p = subprocess.run(["mount", *argv, str(folder)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot {what} here: {p.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 600 KiB tmpfs: writes there run out of space (skipped unless root may mount)."""
    why = _can_mount()
    if why:
        pytest.skip(why)
    mnt = tmp_path / "disk"
    mnt.mkdir()
    with _mounted(["-t", "tmpfs", "-o", "size=600k", "tmpfs"], mnt, "mount a tmpfs") as folder:
        yield folder


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write into (a read-only bind mount as root, mode 0555 otherwise)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "before.txt").write_text("kept")
    if os.geteuid() == 0:
        with _mounted(["--bind", "-o", "ro", str(ro)], ro, "bind-mount read-only") as folder:
            yield folder
    else:
        ro.chmod(0o555)
        try:
            yield ro
        finally:
            ro.chmod(0o755)
