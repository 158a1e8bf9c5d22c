"""Speed and memory of `cdtool detect` beside the tools analysts would use instead.

Run by hand; each measurement runs in a fresh process, so its peak RSS (ru_maxrss) is its own, and the modes
of one comparison run interleaved (A B C A B C ...) so a busy machine slows them alike. Medians with the
range over repeats. Pairs are generated once per --workdir (seeded, structured texture, deflate, tiled).

    python benchmarks/detect_speed.py compare --size 8192 --model cva --repeats 3
    python benchmarks/detect_speed.py compare --size 4096 --model siam_diff_unet_rgb --device cuda
    python benchmarks/detect_speed.py memory --shapes 2048x2048 4096x4096 8192x8192 16384x4096 4096x16384
    python benchmarks/detect_speed.py throughput --size 4096 --models cva pca_kmeans irmad
    python benchmarks/detect_speed.py workers --size 8192 --workers 0 1 2 4 8
    python benchmarks/detect_speed.py changed --size 8192 --repeats 1

Modes of `compare`:
  detect     `cdtool detect` as a user runs it (score + mask COGs, polygons, preview)
  lean       the same without polygons and preview (score and mask COGs only)
  model      the model alone on the same tiles: the time inside the predictor calls (normalise, transfer,
             forward) on every core, reading not timed; pipeline efficiency = detect / model
  read       a read-only pass over the same tiles: the limit for a model cheaper than the disk
  monai      MONAI sliding_window_inference (Gaussian blending, same model, weights, tile, overlap and batch),
             the rasters loaded whole as its users do, then the score map written (deflate GeoTIFF)
  naive      the whole raster through the model in one call, then the score map written
`changed` runs `cdtool detect` (polygons and preview) on the pair and on the same pair with AFTER's lower half
replaced by noise, an unrelated texture: one changed region winds through every band of that half, with
thousands of holes (the polygon writer held all its pieces until it closed). Peak memory should not differ by
more than a band's worth; regions per second are the regions written over the run's wall time.
Every mode runs the model chosen by --model with --native-scale semantics (no resampling), so all see the
same pixels. Fixed settings are printed with each result.
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, threading, time
spec = json.loads(sys.argv[1])
if spec.get("memory_limit_gb"):  # an address-space ceiling: running out is a MemoryError, not the OOM killer
    resource.setrlimit(resource.RLIMIT_AS, (int(spec["memory_limit_gb"] * 2**30),) * 2)
mode, before, after, out = spec["mode"], spec["before"], spec["after"], spec["out"]
util = []
def watch_gpu():
    try:
        import pynvml
        pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not done.is_set():
            util.append(pynvml.nvmlDeviceGetUtilizationRates(h).gpu); time.sleep(0.1)
    except Exception:
        pass
done = threading.Event()
if spec["device"].startswith("cuda"):
    threading.Thread(target=watch_gpu, daemon=True).start()
import numpy as np, torch
from cdtool.inference.detect import DetectOptions, detect, input_domain
from cdtool.inference.runner import plan_scoring
from cdtool.inference.detector import choose_detector, pick_device
from cdtool.io.pair import open_pair
opts = DetectOptions(model=spec["model"], tile=spec["tile"], overlap=spec["overlap"], batch_size=spec["batch"],
                     device=spec["device"], native_scale=True, overwrite=True, workers=spec.get("workers", 0),
                     readers=spec.get("readers"), polygons=mode == "detect", preview=mode == "detect")
t = time.perf_counter()
extra = {}
if mode in ("detect", "lean"):
    r = detect(before, after, out, opts)
    extra = {"regions": r.regions, "changed_share": round(r.changed_share, 4), "threshold": round(r.threshold, 4)}
else:
    import rasterio
    from cdtool.io.writers import GDAL_ENV
    device = pick_device(opts.device)
    with rasterio.Env(**GDAL_ENV), open_pair(before, after) as pair:  # detect's GDAL settings (block cache)
        choice = choose_detector(opts.model, input_domain(pair, None), True)
        plan = plan_scoring(pair, choice, device, opts)
        tiles = [t_ for row in plan.rows for t_ in row]
        batches = [tiles[k:k + plan.batch] for k in range(0, len(tiles), plan.batch)]
        if mode in ("model", "read"):
            # every core for the model: its own compute on this machine is the limit detect is held to
            t = time.perf_counter(); busy = 0.0
            for batch in batches:
                data = [pair.read(t_, native=True)[0] for t_ in batch]
                if mode == "model":
                    t0 = time.perf_counter(); plan.predictor(data); busy += time.perf_counter() - t0
            if mode == "model":
                t = time.perf_counter() - busy
        else:  # monai, naive: the rasters whole in memory, as their users load them
            import rasterio
            with rasterio.open(before) as b, rasterio.open(after) as a:
                stack = np.stack([b.read(), a.read()]); profile = b.profile
            x = torch.from_numpy(plan.predictor.normalizer(stack))[None]  # (1, 2, C, H, W)
            del stack
            model = plan.predictor.model
            dev = plan.predictor.device
            amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
            c = x.shape[2]
            with torch.inference_mode(), torch.autocast(**amp):
                if mode == "monai":
                    from monai.inferers import sliding_window_inference
                    flat = x.reshape(1, 2 * c, *x.shape[-2:])
                    del x
                    y = sliding_window_inference(flat, (plan.tile, plan.tile), plan.batch,
                                                 lambda z: model(z[:, :c], z[:, c:]).float(),
                                                 overlap=plan.overlap / plan.tile, mode="gaussian",
                                                 sw_device=dev, device=torch.device("cpu"))
                else:
                    y = model(x[:, 0].to(dev), x[:, 1].to(dev)).float().cpu()
            score = y[0, 0].numpy().astype("float32")
            profile.update(count=1, dtype="float32", compress="deflate", predictor=3, tiled=True, blockxsize=256,
                           blockysize=256, BIGTIFF="IF_SAFER", nodata=None)
            with rasterio.open(os.path.join(out, "score.tif"), "w", **profile) as ds:
                ds.write(score, 1)
done.set()
res = {"seconds": time.perf_counter() - t, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       **extra}
if util:
    res["gpu_util_mean"] = round(sum(util) / len(util), 1)
if spec["device"].startswith("cuda"):
    res["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(res))
"""


def pair(workdir: Path, height: int, width: int, bands: int = 3, dtype: str = "uint8") -> tuple[Path, Path]:
    """The seeded generated pair of that shape, written once per workdir."""
    from cdtool.generated_pairs import write_pair

    folder = workdir / f"pair_{height}x{width}_{bands}{dtype}"
    if not (folder / "truth.tif").exists():
        t = time.perf_counter()
        write_pair(folder, size=height, width=width, bands=bands, dtype=dtype, seed=0, detail=True,
                   processes=os.cpu_count() or 1)
        print(f"generated {folder.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return folder / "before.tif", folder / "after.tif"


def half_changed(workdir: Path, size: int, bands: int = 3, dtype: str = "uint8") -> tuple[Path, Path]:
    """The seeded pair with AFTER's lower half replaced by seeded uniform noise, written once per workdir."""
    import numpy as np
    import rasterio

    before, after = pair(workdir, size, size, bands, dtype)
    half = after.with_name("after_lower_half_noise.tif")
    if not half.exists():
        tmp = half.with_name(".partial-" + half.name)
        shutil.copy(after, tmp)
        rng = np.random.default_rng(1)
        top = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 1.0
        with rasterio.open(tmp, "r+") as ds:
            for r in range(size // 2, size, 256):
                h = min(256, size - r)
                noise = rng.random((bands, h, size)) * top
                ds.write(noise.astype(dtype), window=((r, r + h), (0, size)))
        os.replace(tmp, half)
    return before, half


def measure(spec: dict, timeout: float) -> dict:
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    try:
        # the peers run with the allocator their users have: cdtool's tuning (cdtool.runtime) would be ours
        peer = {"CDTOOL_TUNE_ALLOCATOR": "0"} if spec["mode"] in ("monai", "naive") else {}
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **peer})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
        killed = proc.returncode < 0 or any(k in proc.stderr for k in ("MemoryError", "out of memory",
                                                                        "Unable to allocate", "can't allocate"))
        return {"error": ("out of memory: " if killed else "") + lines[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summary(runs: list[dict], key: str) -> str:
    vals = [r[key] for r in runs if key in r]
    if not vals:
        errors = {r.get("error", "?") for r in runs}
        return "; ".join(sorted(errors))
    med = statistics.median(vals)
    return f"{med:.1f} ({min(vals):.1f}–{max(vals):.1f})" if len(vals) > 1 else f"{med:.1f}"


def interleaved(specs: dict[str, dict], repeats: int, timeout: float) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in specs}
    for rep in range(repeats):
        for name, spec in specs.items():
            res = measure(spec, timeout)
            runs[name].append(res)
            print(json.dumps({"run": name, "repeat": rep, **res}), flush=True)
    return runs


def base_spec(args, before: Path, after: Path, work: Path, name: str, **over) -> dict:
    return {"mode": name, "before": str(before), "after": str(after), "out": str(work / f"out_{name}"),
            "model": args.model, "tile": args.tile, "overlap": args.overlap, "batch": args.batch,
            "device": args.device, "memory_limit_gb": args.memory_limit_gb, **over}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["compare", "memory", "throughput", "workers", "changed"])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--bands", type=int, default=3)
    parser.add_argument("--dtype", default="uint8")
    parser.add_argument("--model", default="cva")
    parser.add_argument("--models", nargs="+", default=["cva", "pca_kmeans", "irmad"])
    parser.add_argument("--modes", nargs="+", default=["detect", "lean", "model", "read", "monai", "naive"])
    parser.add_argument("--shapes", nargs="+", default=["2048x2048", "4096x4096", "8192x8192", "16384x4096",
                                                        "4096x16384", "16384x16384"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=None, help="default: detect's (64; classical models twice their halo)")
    parser.add_argument("--batch", type=int, default=None, help="default: detect's (1 on the CPU, 8 on a GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="address-space ceiling per run (a run past it fails with MemoryError)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cdtool-speed-"))
    work.mkdir(parents=True, exist_ok=True)

    settings = {"model": args.model, "tile": args.tile, "overlap": args.overlap, "batch": args.batch,
                "device": args.device, "threads": os.environ.get("OMP_NUM_THREADS", "all"),
                "gdal_cache_mb": 128, "cpus": os.cpu_count()}
    print(json.dumps({"settings": settings}), flush=True)
    mpx = args.size * args.size / 1e6
    if args.what == "compare":
        before, after = pair(work, args.size, args.size, args.bands, args.dtype)
        specs = {m: base_spec(args, before, after, work, m) for m in args.modes}
        runs = interleaved(specs, args.repeats, args.timeout)
        model_secs = [r["seconds"] for r in runs.get("model", []) if "seconds" in r]
        model_med = statistics.median(model_secs) if model_secs else float("nan")
        print(f"\n{args.size}² × {args.bands} {args.dtype}, {json.dumps(settings)}")
        print("| mode | wall s | peak RSS MiB | Mpx/s | / model-only |")
        print("|---|---|---|---|---|")
        for name, rs in runs.items():
            secs = [r["seconds"] for r in rs if "seconds" in r]
            rate = f"{mpx / statistics.median(secs):.2f}" if secs else "–"
            ratio = f"{statistics.median(secs) / model_med:.2f}" if secs and model_med == model_med else "–"
            print(f"| {name} | {summary(rs, 'seconds')} | {summary(rs, 'peak_mib')} | {rate} | {ratio} |")
    elif args.what == "memory":
        specs = {}
        for shape in args.shapes:
            h, w = (int(v) for v in shape.split("x"))
            before, after = pair(work, h, w, args.bands, args.dtype)
            specs[shape] = base_spec(args, before, after, work, "detect", out=str(work / f"out_mem_{shape}"))
        runs = interleaved(specs, args.repeats, args.timeout)
        print("\n| rows × columns | Mpx | wall s | peak RSS MiB |\n|---|---|---|---|")
        for shape, rs in runs.items():
            h, w = (int(v) for v in shape.split("x"))
            print(f"| {shape} | {h * w / 1e6:.0f} | {summary(rs, 'seconds')} | {summary(rs, 'peak_mib')} |")
    elif args.what == "changed":
        before, after = pair(work, args.size, args.size, args.bands, args.dtype)
        half = half_changed(work, args.size, args.bands, args.dtype)[1]
        specs = {"unchanged pair": base_spec(args, before, after, work, "detect", out=str(work / "out_same")),
                 "lower half changed": base_spec(args, before, half, work, "detect", out=str(work / "out_half"))}
        runs = interleaved(specs, args.repeats, args.timeout)
        print(f"\n{args.size}² × {args.bands} {args.dtype}, {args.model}, detect with polygons and preview")
        print("| pair | wall s | peak RSS MiB | regions | regions/s |\n|---|---|---|---|---|")
        for name, rs in runs.items():
            ok = [r for r in rs if "seconds" in r]
            rate = f"{statistics.median(r['regions'] / r['seconds'] for r in ok):.1f}" if ok else "–"
            regions = ok[0]["regions"] if ok else "–"
            print(f"| {name} | {summary(rs, 'seconds')} | {summary(rs, 'peak_mib')} | {regions} | {rate} |")
    elif args.what == "throughput":
        before, after = pair(work, args.size, args.size, args.bands, args.dtype)
        specs = {}
        for model in args.models:
            for mode in ("lean", "model"):
                specs[f"{model}/{mode}"] = base_spec(args, before, after, work, mode, model=model,
                                                     out=str(work / f"out_{model}_{mode}"))
        specs["read"] = base_spec(args, before, after, work, "read")
        runs = interleaved(specs, args.repeats, args.timeout)
        print(f"\n{args.size}² × {args.bands}: Mpx/s (median)")
        print("| method | detect (lean) | model only | GPU util % |\n|---|---|---|---|")
        for model in args.models:
            cells = []
            for mode in ("lean", "model"):
                secs = [r["seconds"] for r in runs[f"{model}/{mode}"] if "seconds" in r]
                cells.append(f"{mpx / statistics.median(secs):.2f}" if secs else "–")
            util = [r["gpu_util_mean"] for r in runs[f"{model}/lean"] if "gpu_util_mean" in r]
            print(f"| {model} | {cells[0]} | {cells[1]} | {statistics.median(util) if util else '–'} |")
        secs = [r["seconds"] for r in runs["read"] if "seconds" in r]
        print(f"| read-only pass | {mpx / statistics.median(secs):.2f} | | |" if secs else "| read-only pass | – | | |")
    else:
        before, after = pair(work, args.size, args.size, args.bands, args.dtype)
        specs = {f"workers={n}": base_spec(args, before, after, work, "lean", workers=n,
                                           out=str(work / f"out_workers{n}")) for n in args.workers}
        runs = interleaved(specs, args.repeats, args.timeout)
        print(f"\n{args.size}², {args.model}: wall s (median, range) by Dask workers (0: in process)")
        print("| workers | wall s | Mpx/s |\n|---|---|---|")
        for name, rs in runs.items():
            secs = [r["seconds"] for r in rs if "seconds" in r]
            print(f"| {name.split('=')[1]} | {summary(rs, 'seconds')} | {mpx / statistics.median(secs):.2f} |" if secs
                  else f"| {name.split('=')[1]} | {summary(rs, 'seconds')} | – |")


if __name__ == "__main__":
    main()
