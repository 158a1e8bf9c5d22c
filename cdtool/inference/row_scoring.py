"""Where the tiles are scored: in this process (reader threads fetching ahead of the model), or as Dask tasks
on an embedded local cluster (`--workers N`) or an existing one (`--scheduler ADDRESS`).

Either way the result is a stream, in grid order, of (row, [(tile, score, valid, preview samples)], whether
the row is complete): batches in this process, whole rows from Dask. The runner (`cdtool.inference.runner`)
stitches them the same way from either, so the outputs are the same and the polygons of regions that cross task borders come out
whole (they are built afterwards, from the stitched map). A Dask task is one grid row: the worker opens the
pair itself (once per worker process) and runs the detector it was sent once; only a bounded number of rows
is in flight, so the driver's memory stays bounded by the window.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from cdtool.errors import CdtoolError, InputError, OptionError
from cdtool.inference.predictor import CpuShare, usable_cores
from cdtool.io.preview import PreviewGrid
from cdtool.windows import Tile

# (tile, score, valid, preview samples or None) for each tile of a grid row
RowResult = list[tuple[Tile, np.ndarray, np.ndarray, np.ndarray | None]]


def _read_batch(pair, tiles: list[Tile], grid: PreviewGrid | None) -> list[tuple]:
    """Read tiles of a pair: (data in the files' compact type, valid, preview samples) each; the samples are taken
    here, off the driver."""
    out = []
    for tile in tiles:
        data, valid = pair.read(tile, native=True)
        out.append((data, valid, grid.take(tile, data, valid) if grid is not None else None))
    return out


def local_rows(pair, predictor, rows: list[list[Tile]], batch_size: int, readers: int = 1,
               grid: PreviewGrid | None = None) -> Iterator[tuple[int, RowResult, bool]]:
    """Score the grid in this process while `readers` threads read the next batches, in order, yielding each
    batch as (grid row, results, whether the row is complete) so no more than a batch waits. Each extra
    reader opens the pair again (GDAL handles are not shared between threads); GDAL decompresses without
    the GIL, so readers keep a GPU busy where one would not."""
    batches = [(i, row[k:k + batch_size]) for i, row in enumerate(rows) for k in range(0, len(row), batch_size)]
    local, opened, lock = threading.local(), [], threading.Lock()

    def read(tiles: list[Tile]):
        start = time.perf_counter()
        own = pair if readers == 1 else getattr(local, "pair", None)
        if own is None:
            own = local.pair = pair.reopen()
            with lock:
                opened.append(own)
        return _read_batch(own, tiles, grid), time.perf_counter() - start

    pending: deque = deque()
    on_cpu = predictor.device.type == "cpu"
    try:
        with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="cdtool-read") as pool, \
                CpuShare(readers if on_cpu else 0) as share:
            for k in range(min(readers + 1, len(batches))):
                pending.append(pool.submit(read, batches[k][1]))
            for k, (row_index, batch) in enumerate(batches):
                data, read_s = pending.popleft().result()
                if k + readers + 1 < len(batches):
                    pending.append(pool.submit(read, batches[k + readers + 1][1]))
                start = time.perf_counter()
                scores = predictor([d for d, _, _ in data])
                share.observe(read_s, time.perf_counter() - start)
                results = [(tile, score, valid, thumb) for tile, score, (_, valid, thumb) in zip(batch, scores, data)]
                yield row_index, results, k + 1 == len(batches) or batches[k + 1][0] != row_index
    finally:
        for future in pending:
            future.cancel()
        for other in opened:
            pair.bad_blocks |= other.bad_blocks
            other.close()


_WORKER_PAIRS: dict[str, object] = {}  # pairs a worker process has opened, by their open arguments


def _score_row(open_args: dict, predictor, tiles: list[Tile], grid: PreviewGrid | None):
    """A Dask task: read and score one grid row on the worker (the pair opened once per worker process)."""
    from cdtool.io.pair import open_pair

    key = repr(sorted(open_args.items()))
    if key not in _WORKER_PAIRS:
        _WORKER_PAIRS[key] = open_pair(**open_args)
    torch.set_num_threads(1)
    own = _WORKER_PAIRS[key]
    known = set(own.bad_blocks)
    data = _read_batch(own, tiles, grid)
    scores = predictor([d for d, _, _ in data])
    # blocks read as nodata (--skip-bad-windows) in this task travel back, so detect.json counts them
    return [(s, v, thumb) for s, (_, v, thumb) in zip(scores, data)], own.bad_blocks - known


def workers_option(value: int | None) -> int:
    """`--workers` as given on the command line: left out, tiles are scored in this process (0); given, it
    counts processes, so 0 or fewer is a mistake rather than a quiet fallback."""
    if value is None:
        return 0
    if value < 1:
        raise OptionError("workers", f"must be at least 1 process (leave it out to score in this process), got {value}")
    return value


def capped_workers(workers: int) -> tuple[int, str | None]:
    """(processes to start, a note when fewer than asked): at most one per core this process may use; more only
    queue for the same cores, each paying a process start and a copy of the model (--workers 1000 on a 64x64
    pair started 41 processes)."""
    cores = usable_cores()
    if workers > cores:
        return cores, f"--workers {workers} capped at {cores}, the cores this process may use"
    return workers, None


def check_scheduler(address: str, timeout: float = 10.0) -> None:
    """Refuse a --scheduler that is no Dask address, or at which nothing answers, in one line and before any
    output exists: the address was first used when the first row was sent, after the output folder was made
    (an unreachable scheduler left it behind), and a malformed one ended in "unexpected ValueError"."""
    try:
        from distributed.comm import parse_address
        from distributed.comm.addressing import get_address_host_port
        from distributed.comm.registry import get_backend
    except ImportError:
        raise InputError("--workers/--scheduler need Dask: pip install 'dask[distributed]'") from None
    try:
        scheme, _ = parse_address(address)
        get_backend(scheme)
        host, port = get_address_host_port(address) if scheme in ("tcp", "tls", "ws", "wss") else (None, None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"--scheduler {address!r}: not a Dask scheduler address ({exc}); expected one like "
                         "tcp://10.0.0.5:8786") from None
    if host is None:
        return  # in-process and UCX addresses: the client's own connection tells
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except (OSError, OverflowError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise InputError(f"--scheduler {address}: cannot reach the Dask scheduler ({reason})") from None


def dask_rows(pair, predictor, rows: list[list[Tile]], workers: int, scheduler: str | None,
              grid: PreviewGrid | None = None) -> Iterator[tuple[int, RowResult, bool]]:
    """Score the grid as one Dask task per grid row, yielding rows in order with at most 2 per worker queued."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--workers/--scheduler need Dask: pip install 'dask[distributed]'") from None
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="10s")
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=40)
            client = Client(cluster)
    except (OSError, ValueError) as exc:
        raise InputError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") from None
    try:
        open_args = pair.open_args()
        remote = client.scatter(predictor.portable(), broadcast=True)
        in_flight = max(2, 2 * len(client.scheduler_info()["workers"]))

        def submit(i: int):
            return client.submit(_score_row, open_args, remote, rows[i], grid, pure=False)

        futures = {i: submit(i) for i in range(min(in_flight, len(rows)))}
        for i, row in enumerate(rows):
            try:
                results, bad_blocks = futures.pop(i).result()
            except InputError:
                raise
            except Exception as exc:  # a worker died or the task failed there
                raise CdtoolError(f"Dask task for tile row {i} failed ({type(exc).__name__}: {exc})") from None
            if i + in_flight < len(rows):
                futures[i + in_flight] = submit(i + in_flight)
            pair.bad_blocks |= bad_blocks
            yield i, [(t, s, v, thumb) for t, (s, v, thumb) in zip(row, results)], True
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
