"""Run a detector on batches of tiles: normalise, pad to the model's size multiple, infer (bf16 autocast,
channels-last and pinned transfers on CUDA), crop back. Returns numpy scores so the stitcher stays
framework-free."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from cdtool.inference.detector import Detector
from cdtool.models.base import ChangeModel
from cdtool.normalization import MIN_SAMPLE, Normalizer, sample_tiles, tiles_with_data
from cdtool.runtime import tune_allocator


def fit_to_pair(model: ChangeModel, pair, normalizer: Normalizer) -> None:
    """Give a label-free model its per-pair statistics from normalised windows spread over the pair (the
    windows the normaliser samples, or where they hold too few valid pixels, windows of a full scan that hold
    some), so every tile is then scored with the same statistics. A model that `fits_whole_pair` gets windows
    that touch every pixel of a raster up to 1,536 pixels a side."""
    tiles = _normalised(pair, normalizer, sample_tiles(*pair.shape, cover=model.fits_whole_pair))
    if sum(int(v.sum()) for *_, v in tiles) < MIN_SAMPLE:
        tiles = _normalised(pair, normalizer, tiles_with_data(pair))
    model.fit(tiles)


def _normalised(pair, normalizer: Normalizer, tiles) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    out = []
    for tile in tiles:
        data, valid = pair.read(tile)
        z = torch.from_numpy(normalizer(data))
        out.append((z[0], z[1], torch.from_numpy(valid)))
    return out


@torch.no_grad()
def predict_padded(model: ChangeModel, before: torch.Tensor, after: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """Scores (B, 1, H, W) in [0, 1] for normalised inputs of any size: pad to the model's size multiple
    (replicating the edge), run (autocast on CUDA: bf16 where the GPU has it, its range never overflows
    where fp16 could), crop back. The one way every caller runs a model."""
    h, w = before.shape[-2:]
    before, after = pad_to_multiple(before, after, int(model.size_multiple))
    half = torch.bfloat16 if before.is_cuda and torch.cuda.is_bf16_supported() else torch.float16
    with torch.autocast("cuda", dtype=half, enabled=amp and before.is_cuda):
        y = model(before, after)
    return y[..., :h, :w].float().clamp(0.0, 1.0)


def pad_to_multiple(before: torch.Tensor, after: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both dates edge-replicated on the right and bottom to a multiple of the model's size multiple."""
    h, w = before.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        before = F.pad(before, (0, pw, 0, ph), mode="replicate")
        after = F.pad(after, (0, pw, 0, ph), mode="replicate")
    return before, after


def float_on_device(raw: np.ndarray, device: torch.device, pin: bool = False) -> torch.Tensor:
    """A batch of raw tiles as float32 on `device`, sent in its own compact type and converted there: uint8
    moves a quarter of the bytes. uint16 travels as its int16 bit pattern and is unmasked after, as torch
    casts its uint16 on the CPU only."""
    unsigned16 = raw.dtype == np.uint16
    x = torch.from_numpy(raw.view(np.int16) if unsigned16 else raw)
    x = (x.pin_memory() if pin else x).to(device, non_blocking=True)
    return x.to(torch.int32).bitwise_and_(0xFFFF).float() if unsigned16 else x.float()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class CpuShare:
    """How many cores torch gets beside the reader threads, judged from the work itself: where reading has
    taken under a tenth of the model's time on all cores so far (a network heavier than the disk), all
    cores, since the readers then sleep nearly always and a barrier seldom waits on them; otherwise the cores
    the readers leave free (OpenMP threads that share a core with a busy reader wait at every barrier). Totals,
    not the last batch, decide: a tile that starts a new row of compressed blocks reads slower and would flip
    the choice. A heavy network so gains the readers' cores, while a cheap model (CVA) keeps its one core to
    itself."""

    LIGHT_READS = 0.1  # reading / model time below which the readers' cores go to the model

    def __init__(self, readers: int):
        self.cores, self.readers = usable_cores(), readers
        self.own = max(1, self.cores - readers)
        self.read_s = self.model_all_s = 0.0

    def __enter__(self) -> "CpuShare":
        self._before = torch.get_num_threads()
        self.threads = max(1, min(self._before, self.own))
        torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self._before)

    def observe(self, read_s: float, model_s: float) -> None:
        """One batch's read time (in its reader thread) and model time (on the threads it had)."""
        if self.own >= self.cores:
            return
        self.read_s += read_s / self.readers
        self.model_all_s += model_s * self.threads / self.cores  # what all cores would have taken
        light = self.read_s < self.LIGHT_READS * self.model_all_s
        threads = max(1, min(self._before, self.cores if light else self.own))
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads


class Predictor:
    def __init__(self, detector: Detector, normalizer: Normalizer, device: torch.device):
        self.detector, self.normalizer, self.device = detector, normalizer, device
        tune_allocator()  # batches then reuse the memory the last one freed instead of faulting in new pages
        self.model = detector.model.to(device).eval()
        self.amp = device.type == "cuda"
        # convolutions on a GPU run fastest on NHWC tensors; weights and inputs both, or neither
        self.layout = torch.channels_last if self.amp else torch.contiguous_format
        self.model.to(memory_format=self.layout)

    def portable(self) -> "Predictor":
        """A copy that runs on the CPU, to send to worker processes (on the CPU, the same object)."""
        return self if self.device.type == "cpu" else Predictor(self.detector, self.normalizer, torch.device("cpu"))

    @torch.inference_mode()
    def __call__(self, stacks: list[np.ndarray]) -> list[np.ndarray]:
        """stacks: raw (2, C, h, w) arrays (tiles of one grid may differ in size at the edges) ->
        (h, w) float32 scores each."""
        out: list[np.ndarray | None] = [None] * len(stacks)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(stacks):
            by_shape.setdefault(s.shape[-2:], []).append(i)
        for (h, w), idx in by_shape.items():
            x = float_on_device(np.stack([stacks[i] for i in idx]), self.device, pin=self.amp)
            x = self.normalizer.torch(x)  # (B, 2, C, h, w)
            # NHWC copies for the GPU; on the CPU the date views go as they are (the first op copies anyway)
            before, after = ((x[:, t].contiguous(memory_format=self.layout) for t in (0, 1)) if self.amp
                             else (x[:, 0], x[:, 1]))
            y = predict_padded(self.model, before, after, self.amp).cpu().numpy()
            for j, i in enumerate(idx):
                out[i] = y[j, 0]
        return out  # type: ignore[return-value]
