"""The output folder's lock under contention: several processes taking over the lock of a run that was killed
must leave exactly one of them holding it, each time, and its leftovers cleaned once."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from cdtool.errors import InputError
from cdtool.io.outputs import LOCK, FolderLock

DEAD = "999999999\n"  # above any pid_max: the process of a killed run


def _contender(folder: Path, trials: int, barrier, takers, cleanups, overlaps) -> None:
    """One process: in each trial, take the lock (or be refused), hold it a moment, release it."""

    def on_stale():
        with cleanups.get_lock():
            cleanups.value += 1

    for trial in range(trials):
        barrier.wait()  # the parent has left a dead run's lock
        try:
            lock = FolderLock(folder, on_stale=on_stale)
        except InputError:
            lock = None
        if lock is not None:
            with takers.get_lock():
                takers[trial] += 1
            try:  # a second holder at the same time finds this file
                os.close(os.open(folder / "holder", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                time.sleep(0.002)
                os.unlink(folder / "holder")
            except FileExistsError:
                with overlaps.get_lock():
                    overlaps.value += 1
            lock.release()
        barrier.wait()  # all done
        barrier.wait()  # the parent has checked the folder


def _race(folder: Path, processes: int, trials: int) -> tuple[list[int], int, int, list[int]]:
    """(takers per trial, cleanups, overlaps, trials after which a lock file was left) of the race."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(processes + 1)
    takers, cleanups, overlaps = ctx.Array("i", trials), ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=_contender, args=(folder, trials, barrier, takers, cleanups, overlaps))
             for _ in range(processes)]
    for p in procs:
        p.start()
    left = []
    try:
        for trial in range(trials):
            (folder / LOCK).write_text(DEAD)
            barrier.wait()
            barrier.wait()
            if (folder / LOCK).exists():
                left.append(trial)
            barrier.wait()
    finally:
        for p in procs:
            p.join(timeout=30)
    return list(takers), cleanups.value, overlaps.value, left


def _check(tmp_path: Path, processes: int, trials: int) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    takers, cleanups, overlaps, left = _race(folder, processes, trials)
    assert overlaps == 0, f"two processes held the lock at once {overlaps} times in {trials} trials"
    assert min(takers) >= 1, "a trial where nobody took the dead run's lock over"
    assert cleanups == trials, f"a dead run's leftovers were cleaned {cleanups} times in {trials} trials"
    assert left == [], f"the lock file stayed after trials {left[:5]}"


def test_stale_lock_is_taken_over_by_one_process_at_a_time(tmp_path):
    """Eight processes, 150 takeovers of a dead run's lock (reading the pid, deleting the file and creating a new
    one let two processes hold it in about 1 of 8 trials)."""
    _check(tmp_path, 8, 150)


@pytest.mark.slow
def test_stale_lock_takeover_holds_over_many_trials(tmp_path):
    _check(tmp_path, 8, 6000)


def test_a_live_lock_refuses_and_a_released_one_is_gone(tmp_path):
    """Another process holding the flock is refused with its pid; a plain lock file naming a live process that
    holds no flock (an older cdtool) still refuses; a released lock leaves no file; this process's own lock,
    left by a failure, is taken over."""
    folder = tmp_path / "out"
    folder.mkdir()
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()

    def hold():
        lock = FolderLock(folder)
        ready.set()
        done.wait(30)
        lock.release()

    holder = ctx.Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(InputError, match=f"process {holder.pid}"):
            FolderLock(folder)
    finally:
        done.set()
        holder.join(30)
    assert not (folder / LOCK).exists()
    (folder / LOCK).write_text(f"{os.getppid()}\n")
    with pytest.raises(InputError, match=f"process {os.getppid()}"):
        FolderLock(folder)
    (folder / LOCK).unlink()
    first = FolderLock(folder)  # never released: a failure
    second = FolderLock(folder)
    assert (folder / LOCK).read_text() == f"{os.getpid()}\n"
    first.release()  # the stale object no longer removes the live lock
    assert (folder / LOCK).exists()
    second.release()
    assert not (folder / LOCK).exists()
