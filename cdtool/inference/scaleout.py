"""Where the tiles are scored: in this process (a reader thread fetching ahead of the model), or as Dask tasks
on an embedded local cluster (`--workers N`) or an existing one (`--scheduler ADDRESS`).

Either way the result is a stream of grid rows, in order, each a list of (tile, score, valid); the caller
stitches and writes them exactly as before, so the outputs are the same and the polygons of regions that
cross task borders come out whole (they are built afterwards, from the stitched map). A Dask task is one grid
row: the worker opens the pair itself (once per worker process) and runs the detector it was sent once;
only a bounded number of rows is in flight, so the driver's memory stays bounded by the window.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from cdtool.errors import CdtoolError, InputError
from cdtool.windows import Tile

RowResult = list[tuple[Tile, np.ndarray, np.ndarray]]


def local_rows(pair, predictor, rows: list[list[Tile]], batch_size: int) -> Iterator[tuple[int, RowResult]]:
    """Score the grid in this process, a reader thread fetching the next batch while the model runs."""
    batches = [(i, row[k:k + batch_size]) for i, row in enumerate(rows) for k in range(0, len(row), batch_size)]
    read = lambda batch: [pair.read(t) for t in batch]  # noqa: E731
    done: RowResult = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdtool-read") as reader:
        pending = reader.submit(read, batches[0][1])
        for k, (row_index, batch) in enumerate(batches):
            data = pending.result()
            if k + 1 < len(batches):
                pending = reader.submit(read, batches[k + 1][1])
            scores = predictor([d for d, _ in data])
            done += [(tile, score, valid) for tile, score, (_, valid) in zip(batch, scores, data)]
            if k + 1 == len(batches) or batches[k + 1][0] != row_index:
                yield row_index, done
                done = []


_WORKER_PAIRS: dict[tuple, object] = {}  # pairs a worker process has opened, by their open arguments


def _score_row(open_args: tuple, predictor, tiles: list[Tile]) -> list[tuple[np.ndarray, np.ndarray]]:
    """A Dask task: read and score one grid row on the worker."""
    from cdtool.io.pair import open_pair

    pair = _WORKER_PAIRS.get(open_args)
    if pair is None:
        before, after, bands, align, wrap, skip = open_args
        pair = _WORKER_PAIRS[open_args] = open_pair(before, after, bands=list(bands) if bands else None,
                                                    align=align, wrap=wrap, skip_bad_windows=skip)
    torch.set_num_threads(1)
    data = [pair.read(t) for t in tiles]
    scores = predictor([d for d, _ in data])
    return [(s, v) for s, (_, v) in zip(scores, data)]


def dask_rows(pair, predictor, rows: list[list[Tile]], workers: int, scheduler: str | None
              ) -> Iterator[tuple[int, RowResult]]:
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
    except OSError as exc:
        raise InputError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") from None
    try:
        open_args = (pair.sources[0], pair.sources[1], tuple(pair.requested_bands or ()), pair.align, pair.wrap,
                     pair.skip_bad_windows)
        remote = client.scatter(predictor.portable(), broadcast=True)
        in_flight = max(2, 2 * len(client.scheduler_info()["workers"]))
        futures = {}
        for i in range(min(in_flight, len(rows))):
            futures[i] = client.submit(_score_row, open_args, remote, rows[i], pure=False)
        for i, row in enumerate(rows):
            try:
                results = futures.pop(i).result()
            except InputError:
                raise
            except Exception as exc:  # a worker died or the task failed there
                raise CdtoolError(f"Dask task for tile row {i} failed ({type(exc).__name__}: {exc})") from None
            nxt = i + in_flight
            if nxt < len(rows):
                futures[nxt] = client.submit(_score_row, open_args, remote, rows[nxt], pure=False)
            yield i, [(t, s, v) for t, (s, v) in zip(row, results)]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
