"""Outputs written under temporary names and renamed when complete, so a failed or interrupted run leaves
nothing half-written and nothing the user had is overwritten silently: one file (`replaced_when_done`,
`write_text_atomic`) or a set of files renamed together (`OutputSet`)."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cdtool.errors import InputError, write_failure


LOCK = ".cdtool.lock"


@contextmanager
def replaced_when_done(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside `path` to write to (`.name.partial.ext`: the suffix kept, so GDAL
    and numpy see the format); it replaces `path` only if the block completes, and is removed otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder: there is nothing to remove
            pass


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with replaced_when_done(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class FolderLock:
    """One cdtool run writes into a folder at a time: a second run is refused in one line; a lock left by a
    killed run (its process gone), or by this process after a failure, is taken over, after `on_stale` has
    removed what that run left behind."""

    def __init__(self, folder: str | os.PathLike, on_stale: Callable[[], None] | None = None):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: is a file, not an output folder")
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.folder}: output folder is not writable ({exc.strerror or exc})") from None
        self.path = self._acquire(on_stale)

    def _acquire(self, on_stale: Callable[[], None] | None) -> Path:
        lock = self.folder / LOCK
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(lock.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pid = -1
                if pid > 0 and pid != os.getpid() and _alive(pid):  # this process's own lock: left by a failure
                    raise InputError(f"{self.folder}: another cdtool run (process {pid}) is writing here; wait for "
                                     f"it or choose another --out (if there is no such run, delete {lock})") from None
                lock.unlink(missing_ok=True)
                if on_stale is not None:
                    on_stale()
                continue
            except OSError as exc:
                raise InputError(f"{self.folder}: output folder is not writable ({exc.strerror or exc})") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return lock
        raise InputError(f"{self.folder}: could not lock the output folder")

    def release(self) -> None:
        """Unlock; the folder goes too when this run created it and left it empty (it failed before writing)."""
        self.path.unlink(missing_ok=True)
        if self.created:
            try:
                self.folder.rmdir()
            except OSError:  # not empty: the run's outputs are there
                pass

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class OutputSet:
    """A set of files renamed together when complete, written under a `FolderLock`; the hidden partial files of
    a killed run into the same folder are removed."""

    def __init__(self, folder: str | os.PathLike, names: list[str], overwrite: bool = False):
        self.folder = Path(folder)
        self.lock = FolderLock(folder, on_stale=lambda: self._remove_leftovers(names))
        try:
            existing = [n for n in names if (self.folder / n).exists()]
            if existing and not overwrite:
                raise InputError(f"{self.folder}: already holds {', '.join(existing)} (use --overwrite to replace)")
        except BaseException:
            self.lock.release()
            raise
        tag = uuid.uuid4().hex[:8]
        self.names = names
        self.temp = {n: self.folder / f".{Path(n).stem}.partial-{tag}{Path(n).suffix}" for n in names}
        self.done = False

    def _remove_leftovers(self, names: list[str]) -> None:
        """Hidden partial files and work folders of a run that was killed (their names are cdtool's own)."""
        for n in names:
            for p in self.folder.glob(f".{Path(n).stem}.partial-*"):
                p.unlink(missing_ok=True)
        for d in self.folder.glob(".cdtool-work-*"):
            shutil.rmtree(d, ignore_errors=True)

    def path(self, name: str) -> Path:
        """Temporary path to write `name` to; becomes the final name on commit."""
        return self.temp[name]

    def final(self, name: str) -> Path:
        return self.folder / name

    def commit(self) -> dict[str, Path]:
        for n in self.names:
            tmp = self.temp[n]
            if tmp.is_dir():
                if self.final(n).exists():
                    shutil.rmtree(self.final(n))
                tmp.rename(self.final(n))
            elif tmp.exists():
                os.replace(tmp, self.final(n))
            for side in tmp.parent.glob(tmp.name + ".*"):  # e.g. GDAL's .aux.xml sidecars
                os.replace(side, self.final(n).with_name(self.final(n).name + side.name[len(tmp.name):]))
        self.done = True
        return {n: self.final(n) for n in self.names if self.final(n).exists()}

    def abort(self) -> None:
        for tmp in self.temp.values():
            for p in [tmp, *tmp.parent.glob(tmp.name + ".*")]:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.done:
            self.abort()
        self.lock.release()
