"""The shipped diffusion models, pixel and latent, as fp32, w8 and w4: quality, speed, start-up and memory, against
onnxruntime and PyTorch running the same network on the same machine in the same run.

For each model (`--models`, default both shipped ones) the w8 and w4 files are made from the fp32 checkpoint by the
same pipeline as `edgegen quantize --recipe w8|w4`. For each variant:
- prompt accuracy, mean confidence and Frechet distance to held-out real digits on 50 x 10 samples from fixed seeds,
  scored by the shipped classifier (quantize/evaluate_diffusion.py), every variant from the same noise;
- time per image at batch 1 and batch 16 (each model's own sampler and steps unless `--sampler` / `--steps` say
  otherwise, guided: a batch of 16 is U-Net passes of 32), median of
  `--repeats`; for fp32 interleaved with onnxruntime and PyTorch on the same network (exported from the same file,
  float32, all cores) running the same numpy sampler, so the ratio sees the same machine load;
- a fresh process drawing one image (`edgegen diffuse --stats`): wall time and peak RSS, warm (graphs and kernels
  cached by the run before) and, for fp32, cold (empty tinygrad kernel cache and empty edgegen graph cache: a fresh
  install's first image);
- a 4x4 grid PNG under benchmarks/results/.

    nice -n 10 .venv/bin/python benchmarks/bench_diffusion.py             # ~40 min on a shared 2-core machine
    .venv/bin/python benchmarks/bench_diffusion.py --per-digit 5 --repeats 1 --out /tmp/d   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgegen.cli.eval import evaluate_diffusion
from edgegen.quantize.pipeline import quantize_model
from edgegen.quantize.source import load_source
from edgegen.quantize.writer import write_artifact
from edgegen.runtime.diffusion import (
    DEFAULT_GUIDANCE,
    SHIPPED_MODELS,
    Classifier,
    DiffusionParams,
    ImageGenerator,
    grid,
    save_png,
    to_uint8,
)

RESULTS = ROOT / "benchmarks" / "results"
# From the issue. Frechet distance and accuracy absolute for fp32, relative to fp32 for w8 / w4; speed vs onnxruntime.
TARGETS: dict[str, Callable[[dict], bool]] = {
    "fp32 Frechet distance <= 15": lambda m: m["fp32"]["frechet_distance"] <= 15,
    "fp32 prompt accuracy >= 97%": lambda m: m["fp32"]["prompt_accuracy"] >= 0.97,
    "w8 Frechet distance within 5% of fp32":
        lambda m: m["w8"]["frechet_distance"] <= 1.05 * m["fp32"]["frechet_distance"],
    "w8 accuracy within 1 point": lambda m: m["fp32"]["prompt_accuracy"] - m["w8"]["prompt_accuracy"] <= 0.01,
    "w4 Frechet distance within 15% of fp32":
        lambda m: m["w4"]["frechet_distance"] <= 1.15 * m["fp32"]["frechet_distance"],
    "w4 accuracy within 2 points": lambda m: m["fp32"]["prompt_accuracy"] - m["w4"]["prompt_accuracy"] <= 0.02,
    "time per image at batch 16 within 2x of onnxruntime": lambda m: m["fp32"]["vs_onnxruntime_batch16"] <= 2.0,
    "first image of a fresh install < 30 s": lambda m: m["fp32"]["cold_first_image_s"] < 30,
    "warm single image as a fresh process < 2 s": lambda m: m["fp32"]["warm_fresh_process_s"] < 2,
}


class PeerGenerator(ImageGenerator):
    """The edgegen sampler (same numpy loop, same noise) over another runtime's U-Net and decoder."""

    def __init__(self, base: ImageGenerator, eps: Callable, decode: Callable | None):
        self.__dict__.update(base.__dict__)
        self._peer_eps, self._peer_decode = eps, decode

    def eps(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._peer_eps(x.astype(np.float32), t.astype(np.int64), y.astype(np.int64))

    def decode(self, latents: np.ndarray) -> np.ndarray:
        return latents if self._peer_decode is None else np.clip(self._peer_decode(latents), -1, 1)


def peers(path: Path, base: ImageGenerator, tmp: Path) -> dict[str, ImageGenerator]:
    """onnxruntime (always: the test extra installs it) and PyTorch over the float network of `path`."""
    import onnxruntime as ort
    import torch

    from edgegen.quantize.torch_diffusion import export_onnx, torch_networks

    files = export_onnx(path, tmp / path.stem)
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    sessions = {k: ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"]) for k, f in files.items()}

    def ort_eps(x, t, y):
        return sessions["unet"].run(None, {"x": x, "t": t, "y": y})[0]

    def ort_decode(z):
        return sessions["decoder"].run(None, {"z": z.astype(np.float32)})[0]

    eps, dec = torch_networks(path)
    torch.set_num_threads(os.cpu_count() or 1)

    def torch_eps(x, t, y):
        with torch.no_grad():
            return eps(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()

    def torch_decode(z):
        with torch.no_grad():
            return dec(torch.from_numpy(z.astype(np.float32))).numpy()  # type: ignore[misc]

    latent = "decoder" in sessions
    return {"onnxruntime": PeerGenerator(base, ort_eps, ort_decode if latent else None),
            "pytorch": PeerGenerator(base, torch_eps, torch_decode if latent else None)}


def per_image_times(gens: dict[str, ImageGenerator], n: int, params: DiffusionParams, repeats: int) -> dict[str, float]:
    """Median seconds per image drawing `n` at once, each runtime once per round (interleaved: the same load)."""
    labels = np.arange(n) % 10
    for g in gens.values():
        g.sample(labels, params)  # compile / capture this batch size first
    times: dict[str, list[float]] = {k: [] for k in gens}
    for _ in range(repeats):
        for name, g in gens.items():
            t0 = time.perf_counter()
            g.sample(labels, params)
            times[name].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in times.items()}


def fresh_process(model: Path, env: dict[str, str]) -> dict:
    """`edgegen diffuse 3` in a new process: wall seconds and its own --stats (peak RSS)."""
    out = Path(tempfile.mkdtemp()) / "d.png"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgegen.cli", "diffuse", "3", "--model", str(model), "-o", str(out),
                           "--stats", "--no-progress"], capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    return {"wall_s": round(wall, 3), "peak_rss_mb": stats["peak_rss_mb"]}


def bench_model(name: str, fp32: Path, args: argparse.Namespace, out: Path, tmp: Path) -> dict[str, dict]:
    source = load_source(fp32)
    files = {"fp32": fp32}
    for recipe in ("w8", "w4"):
        files[recipe] = tmp / f"{name}-{recipe}.gguf"
        write_artifact(files[recipe], source, quantize_model(source, recipe))
    classifier = Classifier()
    params = DiffusionParams(steps=args.steps, sampler=args.sampler, guidance=args.guidance, seed=0)
    results: dict[str, dict] = {}
    for variant, path in files.items():
        print(f"== {name} {variant}: {path.name}", flush=True)
        env = {**os.environ, "EDGEGEN_CACHE": str(tmp / "cache" / f"{name}-{variant}"),
               "CACHEDB": str(tmp / "cache" / f"{name}-{variant}.db")}
        r: dict = {"file_bytes": path.stat().st_size}
        cold = fresh_process(path, env)  # no kernels, no graphs on disk: a fresh install's first image
        if variant == "fp32":
            r["cold_first_image_s"] = cold["wall_s"]
        warm = fresh_process(path, env)  # what the cold run left: compiled kernels and the captured graph
        r["warm_fresh_process_s"], r["peak_rss_mb"] = warm["wall_s"], warm["peak_rss_mb"]
        gen = ImageGenerator.load(path)
        r["resident_weight_bytes"] = gen.weights.size_bytes()
        quality, images = evaluate_diffusion(gen, classifier, per_digit=args.per_digit, steps=args.steps,
                                             sampler=args.sampler, guidance=args.guidance, seed=0)
        save_png(out / f"diffusion_{name}_{variant}.png",
                 grid(to_uint8(images[[d * args.per_digit + i for d in range(10) for i in range(2)][:16]]), cols=4),
                 scale=2)
        gens = {"edgegen": gen} | (peers(path, gen, tmp) if variant == "fp32" else {})
        for n in (1, 16):
            t = per_image_times(gens, n, params, args.repeats)
            r[f"batch{n}_per_image_s"] = round(t["edgegen"], 4)
            for peer in ("onnxruntime", "pytorch"):
                if peer in t:
                    r[f"{peer}_batch{n}_per_image_s"] = round(t[peer], 4)
                    r[f"vs_{peer}_batch{n}"] = round(t["edgegen"] / t[peer], 2)
        results[variant] = r | quality.as_dict()  # its "guidance": the one used (the model's own by default)
        print(json.dumps(results[variant]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(SHIPPED_MODELS), help="shipped model names (default: all)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: each model's own)")
    ap.add_argument("--sampler", default=None, help="ddim or ddpm (default: each model's own)")
    ap.add_argument("--guidance", type=float, default=None,
                    help=f"guidance (default: each model's own; {DEFAULT_GUIDANCE} for a file without one)")
    ap.add_argument("--per-digit", type=int, default=50, help="images per digit for the scores (default 50)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per batch size (default 5)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for diffusion.json / .md / PNGs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="edgegen-bench-diffusion-"))
    models = {m: bench_model(m, SHIPPED_MODELS[m], args, out, tmp) for m in args.models.split(",")}
    checks = {m: {k: bool(f(r)) for k, f in TARGETS.items()} for m, r in models.items()}
    first = next(iter(models.values()))["fp32"]
    report = {"machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
              "per_digit": args.per_digit,
              "real_accuracy": first["real_accuracy"], "real_vs_real_fd": first["real_vs_real_fd"],
              "models": models, "targets": checks}
    (out / "diffusion.json").write_text(json.dumps(report, indent=2))
    sampling = ", ".join(f"{m} {r['fp32']['sampler'].upper()} {r['fp32']['steps']} steps guidance "
                         f"{r['fp32']['guidance']:g}" for m, r in models.items())
    lines = [f"MNIST diffusion ({sampling}: each model's own unless given), {10 * args.per_digit} digits per "
             f"variant (same seeds); the classifier reads {100 * first['real_accuracy']:.1f}% of real test digits; "
             f"real-vs-real Frechet distance {first['real_vs_real_fd']:.2f} (the floor). Times per image; "
             f"onnxruntime and PyTorch run the fp32 network in the same run, all {os.cpu_count()} cores.", "",
             "| model | variant | file | accuracy | Frechet distance | batch 1 | batch 16 | vs onnxruntime (1 / 16) | "
             "vs PyTorch (1 / 16) | fresh process, warm | cold first image | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, res in models.items():
        for v, r in res.items():
            ort_ratio = f"{r['vs_onnxruntime_batch1']}x / {r['vs_onnxruntime_batch16']}x" if v == "fp32" else ""
            pt_ratio = f"{r['vs_pytorch_batch1']}x / {r['vs_pytorch_batch16']}x" if v == "fp32" else ""
            cold = f"{r['cold_first_image_s']:.1f} s" if "cold_first_image_s" in r else ""
            lines.append(f"| {m} | {v} | {r['file_bytes'] / 1e6:.2f} MB | {100 * r['prompt_accuracy']:.1f}% | "
                         f"{r['frechet_distance']:.2f} | {1000 * r['batch1_per_image_s']:.0f} ms | "
                         f"{1000 * r['batch16_per_image_s']:.0f} ms | {ort_ratio} | {pt_ratio} | "
                         f"{r['warm_fresh_process_s']:.2f} s | {cold} | {r['peak_rss_mb']:.0f} MB |")
    lines += ["", "| target | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    lines += [f"| {k} | " + " | ".join("yes" if checks[m][k] else "NO" for m in models) + " |" for k in TARGETS]
    (out / "diffusion.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
