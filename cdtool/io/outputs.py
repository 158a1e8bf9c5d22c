"""Outputs written under temporary names and renamed when complete, so a failed or interrupted run leaves
nothing half-written and nothing the user had is overwritten silently: one file (`replaced_when_done`,
`write_text_atomic`) or a set of files renamed together (`OutputSet`)."""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from cdtool.errors import InputError, write_failure


LOCK = ".cdtool.lock"
REPLACED = ".replaced-"  # an old output moved aside while a set is committed: `.change_prob.tif.replaced-1a2b3c4d`


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
    """One cdtool run writes into a folder at a time: a second run is refused in one line.

    The lock is an flock on `.cdtool.lock`, held for the run's life (the file holds the pid, for the message).
    The kernel drops it when the process dies, so a killed run's lock is taken over by exactly one process,
    after `on_stale` has removed what that run left behind: reading the old pid, deleting the file and creating
    a new one raced (four processes taking over a dead run's lock, 300 times: 7 times two of them held it). A
    lock is stale when its file names a pid, not merely when it exists: a contender may flock a file another
    has just created and not yet written, and that run left nothing behind (6000 trials: one double clean). A
    lock file naming a live process that holds no flock (an older cdtool) still refuses; a lock of this
    process's own, left by a failure, is taken over."""

    _held: dict[str, "FolderLock"] = {}  # lock path -> the lock this process holds there

    def __init__(self, folder: str | os.PathLike, on_stale: Callable[[], None] | None = None):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: is a file, not an output folder")
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.folder}: output folder is not writable ({exc.strerror or exc})") from None
        self.path = self.folder / LOCK
        self.fd: int | None = None
        self._acquire(on_stale)

    def _acquire(self, on_stale: Callable[[], None] | None) -> None:
        for _ in range(100):  # another run may remove the file between our open and our flock: open it again
            fd = self._open()
            if not self._flock(fd):
                continue
            pid = _read_pid(fd)
            if pid > 0 and pid != os.getpid() and _alive(pid):
                os.close(fd)
                self._refuse(pid)
            self.fd = fd
            FolderLock._held[str(self.path)] = self
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            if pid > 0 and on_stale is not None:  # a dead (or failed) run's lock: what it left goes first
                try:
                    on_stale()
                except BaseException:
                    self.release()
                    raise
            return
        raise InputError(f"{self.folder}: could not lock the output folder")

    def _open(self) -> int:
        """A descriptor of the lock file, created if missing."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise InputError(f"{self.folder}: output folder is not writable ({exc.strerror or exc})") from None

    def _flock(self, fd: int) -> bool:
        """Take the flock on `fd`: True when held on the file the lock path names now; False (fd closed) when
        that file was replaced meanwhile; a lock held by another run is refused."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            ours = FolderLock._held.get(str(self.path)) if pid == os.getpid() else None
            if ours is None or ours.fd is None:
                os.close(fd)
                self._refuse(pid)
            ours._forget()  # this process's own lock, left by a failure: taken over
            return self._flock(fd)
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if current is None or not os.path.samestat(current, os.fstat(fd)):
            os.close(fd)
            return False
        return True

    def _refuse(self, pid: int) -> None:
        who = f"process {pid}" if pid > 0 else "a process"
        raise InputError(f"{self.folder}: another cdtool run ({who}) is writing here; wait for it or choose "
                         f"another --out (if there is no such run, delete {self.path})") from None

    def _forget(self) -> None:
        """Close the file without removing it: the lock passes to another FolderLock of this process."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        """Unlock (the file removed while still locked, so no other run can take it meanwhile); the folder goes
        too when this run created it and left it empty (it failed before writing)."""
        if self.fd is not None:
            try:
                if os.path.samestat(os.stat(self.path), os.fstat(self.fd)):
                    self.path.unlink()
            except OSError:
                pass
            self._forget()
            if FolderLock._held.get(str(self.path)) is self:
                del FolderLock._held[str(self.path)]
        if self.created:
            try:
                self.folder.rmdir()
            except OSError:  # not empty: the run's outputs are there
                pass

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int:
    """The pid a lock file holds; -1 when it holds none (a fresh file, or garbage)."""
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return -1


def _same_file(a: Path, b: Path) -> bool:
    """Whether two resolved paths name one file: equal, or one file under two names (a hard link)."""
    try:
        return a == b or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def refuse_inputs(folder: Path, names: list[str], inputs: list[Path], input_folders: list[Path]) -> None:
    """A run never writes over what it reads, --overwrite or not: an output folder that is or lies inside an
    input band folder (the outputs would join the bands), or an output that would replace an input file (a
    band-folder member, a VRT's source, an archive), is refused before anything is written."""
    here = Path(folder).resolve()
    for source in input_folders:
        if here == source or source in here.parents:
            where = "is" if here == source else "lies inside"
            raise InputError(f"{folder}: {where} the input folder {source}; choose another --out")
    for name in names:
        hit = next((p for p in inputs if _same_file(here / name, Path(p))), None)
        if hit is not None:
            what = "is" if hit == here / name else f"would replace {hit},"
            raise InputError(f"{Path(folder) / name}: {what} an input of this run; choose another --out (outputs "
                             "never replace inputs, even with --overwrite)")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class OutputSet:
    """A set of files renamed together when complete, written under a `FolderLock`; the hidden partial files of
    a killed run into the same folder are removed. Outputs never replace the run's inputs (`refuse_inputs`), and
    existing outputs only with `overwrite`, all of them or none (`commit`)."""

    def __init__(self, folder: str | os.PathLike, names: list[str], overwrite: bool = False,
                 inputs: list[Path] = (), input_folders: list[Path] = ()):
        self.folder = Path(folder)
        refuse_inputs(self.folder, names, list(inputs), list(input_folders))
        self.lock = FolderLock(folder, on_stale=lambda: self._remove_leftovers(names))
        try:
            existing = [n for n in names if (self.folder / n).exists()]
            if existing and not overwrite:
                raise InputError(f"{self.folder}: already holds {', '.join(existing)} (use --overwrite to replace)")
            self._check_targets(names)
        except BaseException:
            self.lock.release()
            raise
        self.tag = uuid.uuid4().hex[:8]
        self.names = names
        self.temp = {n: self.folder / f".{Path(n).stem}.partial-{self.tag}{Path(n).suffix}" for n in names}
        self.dropped: set[str] = set()
        self.done = False

    def _check_targets(self, names: list[str]) -> None:
        """Before any work, and again before any rename: a folder where an output goes cannot be replaced by it
        (and is the user's, not ours to delete), so it is refused rather than met half-way through a commit."""
        for n in names:
            final = self.folder / n
            if final.is_dir() and not final.is_symlink():
                raise InputError(f"{final}: is a folder, so the output {n} cannot replace it; move it away")

    def _remove_leftovers(self, names: list[str]) -> None:
        """Hidden partial files and work folders of a run that was killed (their names are cdtool's own); an old
        output it had moved aside while committing goes back where nothing replaced it."""
        for n in names:
            for p in self.folder.glob(f".{Path(n).stem}.partial-*"):
                _remove(p)
        for p in self.folder.glob(f".*{REPLACED}*"):
            final = self.folder / p.name[1:p.name.rindex(REPLACED)]
            if not any(final.name.startswith(n) for n in names):
                continue
            if final.exists() or final.is_symlink():
                _remove(p)
            else:
                os.replace(p, final)
        for d in self.folder.glob(".cdtool-work-*"):
            shutil.rmtree(d, ignore_errors=True)

    def path(self, name: str) -> Path:
        """Temporary path to write `name` to; becomes the final name on commit."""
        return self.temp[name]

    def final(self, name: str) -> Path:
        return self.folder / name

    def drop(self, *names: str) -> None:
        """These outputs are not written this time (detect's polygons past --max-regions): an older run's files
        of those names go at commit, so the folder never pairs them with this run's other outputs."""
        self.dropped.update(names)

    def _moves(self) -> list[tuple[Path, Path]]:
        """(written file, its final path) for every output written and its sidecars (GDAL's .aux.xml)."""
        moves = []
        for n in self.names:
            tmp, final = self.temp[n], self.final(n)
            if tmp.exists():
                moves.append((tmp, final))
            for side in tmp.parent.glob(tmp.name + ".*"):
                moves.append((side, final.with_name(final.name + side.name[len(tmp.name):])))
        return moves

    def commit(self) -> dict[str, Path]:
        """Put the set in place as one step: every target checked first, the old outputs moved aside, the new
        ones renamed in, the old ones deleted; a failed rename moves everything back, so the folder holds the
        old set or the new one, never a mix."""
        self._check_targets(self.names)
        moves, aside, placed, final = self._moves(), [], [], self.folder
        try:
            for final in [f for _, f in moves] + [self.final(n) for n in sorted(self.dropped)]:
                if final.exists() or final.is_symlink():
                    backup = final.with_name(f".{final.name}{REPLACED}{self.tag}")
                    os.replace(final, backup)
                    aside.append((backup, final))
            for tmp, final in moves:
                os.replace(tmp, final)
                placed.append((tmp, final))
        except OSError as exc:
            self._undo(placed, aside)
            raise write_failure(final, exc) from exc
        for backup, _ in aside:
            _remove(backup)
        self.done = True
        return {n: self.final(n) for n in self.names if self.final(n).exists()}

    @staticmethod
    def _undo(placed: list[tuple[Path, Path]], aside: list[tuple[Path, Path]]) -> None:
        """Back to where the commit started: new files to their hidden names (abort removes them), old back."""
        for tmp, final in reversed(placed):
            os.replace(final, tmp)
        for backup, final in reversed(aside):
            os.replace(backup, final)

    def abort(self) -> None:
        for tmp in self.temp.values():
            for p in [tmp, *tmp.parent.glob(tmp.name + ".*")]:
                _remove(p)

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.done:
            self.abort()
        self.lock.release()
