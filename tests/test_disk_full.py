"""A full disk under `detect`, `tile` and `train`: each stops with one line naming the file it could not write
(exit 1), no traceback, no half-written output, and nothing the user had is lost. The output goes to a tiny
tmpfs (root can mount one) or, failing that, to a process whose files may not grow past a few KB
(RLIMIT_FSIZE: writes fail with EFBIG); where neither can be made the tests skip. Slow: real subprocesses."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine_fixtures import make_pair_folder, tiny_recipe
from tests.conftest import write_tif

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "cdtool.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# The libtiff bundled with GDAL prints its own I/O failures straight to stderr, past any Python handler
# (cdtool's one line follows them); they are not cdtool's messages.
LIBTIFF_NOISE = re.compile(r"^_tiff\w+Proc: ")


class SmallDisk:
    """An output folder with `kb` KB of room: a tmpfs mount, or a limit on file size for the command."""

    def __init__(self, root: Path, kb: int):
        self.folder = root / f"disk-{uuid.uuid4().hex[:6]}"
        self.folder.mkdir()
        self.kb = kb
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(self.folder)],
                                 capture_output=True)
        self.mounted = mounted.returncode == 0

    def _limit_file_size(self) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, no signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.kb * 1024, self.kb * 1024))

    def run(self, args: list, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True,
                              timeout=300, preexec_fn=None if self.mounted else self._limit_file_size)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.folder)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disks = []

    def make(kb: int) -> SmallDisk:
        disk = SmallDisk(tmp_path, kb)
        if not disk.mounted and not _file_size_limit_works(tmp_path):
            pytest.skip("neither a tmpfs nor a file size limit can be set here")
        disks.append(disk)
        return disk

    yield make
    for disk in disks:
        disk.close()


def _file_size_limit_works(tmp_path: Path) -> bool:
    code = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); "
            f"f = open({str(tmp_path / 'probe')!r}, 'wb'); f.write(b'x' * 4096); f.close()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0


def _assert_one_line_naming(result: subprocess.CompletedProcess, folder: Path) -> str:
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not LIBTIFF_NOISE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(folder) in lines[0] and "cannot write" in lines[0], lines[0]
    assert ".partial" not in lines[0], lines[0]  # the output the user asked for, not its hidden partial file
    return lines[0]


def _partials(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".partial" in p.name or p.name == ".cdtool.lock"]


@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.random((3, 400, 400)) * 200).astype(np.uint8)
    b = a.copy()
    b[:, 100:200, 100:200] = 250
    mask = np.zeros((400, 400), np.uint8)
    mask[100:200, 100:200] = 1
    return write_tif(tmp_path / "a.tif", a), write_tif(tmp_path / "b.tif", b), write_tif(tmp_path / "m.tif", mask)


@pytest.mark.parametrize("kb", [96, 1200])
def test_detect_on_a_full_disk(tmp_path, scene, small_disk, kb):
    disk = small_disk(kb)
    if not disk.mounted and kb > 96:
        pytest.skip("a per-file size limit lets this run's files fit")
    out = disk.folder / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    before, after, _ = scene
    r = disk.run(["detect", before, after, "-o", out, "--model", "cva", "-q"], tmp_path)
    _assert_one_line_naming(r, out)
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert _partials(out) == []
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["notes.txt"]  # no output


@pytest.mark.parametrize("kb", [64, 400])
def test_tile_on_a_full_disk(tmp_path, scene, small_disk, kb):
    disk = small_disk(kb)
    (disk.folder / "notes.txt").write_text("the user's own file")
    before, after, mask = scene
    out = disk.folder / "tiles"
    r = disk.run(["tile", before, after, "--mask", mask, "-o", out, "--size", "64", "-q"], tmp_path)
    _assert_one_line_naming(r, out)
    assert (disk.folder / "notes.txt").read_text() == "the user's own file"
    assert _partials(disk.folder) == [] and not (out / "dataset.json").exists()
    for shard in out.rglob("*.npy"):  # what was kept for a rerun to resume is whole
        np.load(shard)


@pytest.mark.parametrize("kb", [16, 200])
def test_train_on_a_full_disk(tmp_path, small_disk, kb):
    disk = small_disk(kb)
    if not disk.mounted and kb > 16:
        pytest.skip("a per-file size limit lets this run's files fit")
    (disk.folder / "notes.txt").write_text("the user's own file")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(make_pair_folder(tmp_path / "pairs", n=4, size=48))))
    run = disk.folder / "run"
    r = disk.run(["train", recipe, "-o", run, "-q"], tmp_path)
    _assert_one_line_naming(r, run)
    assert (disk.folder / "notes.txt").read_text() == "the user's own file"
    assert _partials(disk.folder) == []
    from cdtool.engine import run_files
    from cdtool.io.checkpoint import load_checkpoint

    for checkpoint in run.glob("*.safetensors"):  # whatever was saved is whole
        load_checkpoint(checkpoint)
    if (run / run_files.MANIFEST).exists():  # the last saved epoch is one consistent unit that resume accepts
        run_files.check_manifest(run)
