"""The MNIST diffusion U-Net as fp32, w8 and w4: file size, latency and what quantization cost, in one run.

The fp32 file is the shipped checkpoint (models/weights/unet-mnist.gguf); w8 and w4 are made from it by the same
pipeline as `edgegen quantize --recipe w8|w4`. For each variant, on this CPU:
- latency of one image (batch 1; with guidance that is 2 U-Net passes per step) and of a batch of 64, DDIM, --steps;
- prompt accuracy, mean confidence and Frechet distance to held-out real digits, scored by the shipped classifier
  (quantize/evaluate_diffusion.py), every variant from the same seed;
- a PNG grid (one row per digit) per variant under benchmarks/results/.

    nice -n 10 .venv/bin/python benchmarks/bench_diffusion.py            # ~20 min on a shared 2-core machine
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
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
    DEFAULT_UNET,
    Classifier,
    DiffusionParams,
    ImageGenerator,
    grid,
    save_png,
    to_uint8,
)

RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {  # from the issue: vs fp32
    "fp32 prompt accuracy >= 90%": lambda r: r["fp32"]["prompt_accuracy"] >= 0.90,
    "w8 accuracy within 1 point": lambda r: abs(r["w8"]["prompt_accuracy"] - r["fp32"]["prompt_accuracy"]) <= 0.01,
    "w8 Frechet distance within 5%": lambda r: r["w8"]["frechet_distance"] <= 1.05 * r["fp32"]["frechet_distance"],
    "w4 accuracy within 5 points": lambda r: r["fp32"]["prompt_accuracy"] - r["w4"]["prompt_accuracy"] <= 0.05,
    "w4 Frechet distance within 15%": lambda r: r["w4"]["frechet_distance"] <= 1.15 * r["fp32"]["frechet_distance"],
    "w8 latency no worse than fp32": lambda r: r["w8"]["image_latency_s"] <= r["fp32"]["image_latency_s"] * 1.02,
}


def latency(gen: ImageGenerator, n: int, params: DiffusionParams, repeats: int) -> float:
    """Median seconds to draw `n` images (the first, compiling call not counted)."""
    labels = np.arange(n) % 10
    gen.sample(labels, params)  # compile and capture the graph for this batch size
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gen.sample(labels, params)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_UNET), help="fp32 U-Net checkpoint")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    ap.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="guidance weight (default 5)")
    ap.add_argument("--per-digit", type=int, default=50, help="images per digit for the scores (default 50)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of the one-image latency (default 5)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for diffusion.json / .md / PNGs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="edgegen-bench-diffusion-"))
    source = load_source(args.model)
    files = {"fp32": Path(args.model)}
    for recipe in ("w8", "w4"):
        files[recipe] = tmp / f"unet-mnist-{recipe}.gguf"
        write_artifact(files[recipe], source, quantize_model(source, recipe))
    classifier = Classifier()
    params = DiffusionParams(steps=args.steps, guidance=args.guidance, seed=0)
    results: dict[str, dict] = {}
    for name, path in files.items():
        print(f"== {name}: {path.name}", flush=True)
        gen = ImageGenerator.load(path)
        quality, images = evaluate_diffusion(gen, classifier, per_digit=args.per_digit, steps=args.steps,
                                             guidance=args.guidance, seed=0)
        rows = np.concatenate([images[d * args.per_digit:d * args.per_digit + 10] for d in range(10)])
        save_png(out / f"diffusion_{name}.png", grid(to_uint8(rows), cols=10), scale=2)
        one = latency(gen, 1, params, args.repeats)
        batch = latency(gen, 64, params, 1)
        results[name] = {
            "file_bytes": path.stat().st_size,
            "resident_weight_bytes": gen.weights.size_bytes(),
            "image_latency_s": round(one, 4),
            "batch64_latency_s": round(batch, 3),
            "batch64_per_image_ms": round(1000 * batch / 64, 2),
            **quality.as_dict(),
        }
        print(json.dumps(results[name]), flush=True)
    checks = {k: bool(f(results)) for k, f in TARGETS.items()}
    report = {"machine": platform.platform(), "processor": platform.processor(), "steps": args.steps,
              "guidance": args.guidance, "sampler": "ddim", "per_digit": args.per_digit, "results": results,
              "targets": checks}
    (out / "diffusion.json").write_text(json.dumps(report, indent=2))
    header = (f"MNIST U-Net, DDIM {args.steps} steps, guidance {args.guidance:g}, {10 * args.per_digit} digits per "
              f"variant (same seed), classifier on real test digits: {100 * results['fp32']['real_accuracy']:.1f}%, "
              f"real-vs-real Frechet distance {results['fp32']['real_vs_real_fd']:.3f}")
    lines = [
        header, "",
        "| variant | file | 1 image | batch of 64 | prompt accuracy | mean confidence | Frechet distance |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['file_bytes'] / 1e6:.2f} MB | {r['image_latency_s'] * 1000:.0f} ms | "
                     f"{r['batch64_latency_s']:.2f} s | {100 * r['prompt_accuracy']:.1f}% | "
                     f"{r['mean_confidence']:.3f} | {r['frechet_distance']:.3f} |")
    lines += ["", "| target | met |", "|---|---|"] + [f"| {k} | {'yes' if v else 'NO'} |" for k, v in checks.items()]
    (out / "diffusion.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
