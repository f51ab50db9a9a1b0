"""Bring your own model: a torchvision ResNet-18 checkpoint through the optimise pipeline.

    python benchmarks/byom.py [--epochs 6] [--image-size 96] [--work-dir DIR] [--reuse]

1. The user's side, done once: digits upscaled to 3x96x96 (grey repeated to RGB, ImageNet
   normalisation), torchvision's ResNet-18 trained on it and saved the way a user's checkpoint
   looks: ``torch.save(model.state_dict(), "resnet18.pth")``.
2. modelpress's side: the optimise pipeline through kfp.local from that file with
   ``epochs: 0`` (taken as it is), ``steps: [prune, quantise]``; the pipeline's own benchmark
   measures every variant side by side (interleaved windows, one process, same threads).

Writes benchmarks/results/byom.{json,md}: each variant's accuracy and latency, the ratios the
issue's targets are about, whether each target is met, the machine and library versions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelpress import data, models, training  # noqa: E402
from modelpress.selection import benchmarking  # noqa: E402

TARGETS = (  # (what, variant, reference, most latency ratio, most accuracy points lost)
    ("selected variant vs torch eager fp32", "selected", "torch eager fp32", 1 / 3, 1.0),
    ("static int8 vs ONNX fp32", "static-int8", "onnx fp32", 0.5, 0.5),
    ("structured pruning 0.5 (fine-tuned) vs ONNX fp32", "pruned fp32", "onnx fp32", 0.6, 1.0),
)


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def make_checkpoint(work: Path, args) -> Path:
    """What the user brings: a ResNet-18 state dict trained on their data."""
    ckpt = work / "resnet18.pth"
    if args.reuse and ckpt.exists():
        log(f"reusing {ckpt}")
        return ckpt
    import torch

    ds_dir = work / "dataset"
    data.make_dataset("digits", str(ds_dir), image_size=args.image_size, channels=3, normalise="imagenet", seed=0)
    ds = data.load_dataset(str(ds_dir))
    spec = models.make_spec("torchvision:resnet18", ds.feature_shape, ds.num_outputs,
                            normalisation=ds.schema["normalisation"])
    torch.manual_seed(0)
    model = models.build(spec)
    training.fit(model, ds, training.TrainSettings(epochs=args.epochs, learning_rate=2e-3, patience=0), log=log)
    torch.save(models.unwrap(model).state_dict(), ckpt)
    log(f"checkpoint written: {ckpt} ({ckpt.stat().st_size / 1e6:.1f} MB)")
    return ckpt


def run_pipeline(work: Path, ckpt: Path, args) -> dict:
    sets = {"architecture": "torchvision:resnet18", "model_args": "{}", "weights": str(ckpt), "epochs": "0",
            "steps": "[prune, quantise]", "image_size": str(args.image_size), "channels": "3",
            "normalise": "imagenet", "prune_amount": "0.5", "prune_finetune_epochs": str(args.finetune_epochs),
            "quantisation_methods": "[static-int8, dynamic-int8]", "threads": str(args.threads),
            "window_seconds": "1.0", "max_windows": "12", "tolerance": "0.01", "accuracy_floor": "0.9",
            "repository": str(work / "repo"), "model_name": "resnet18-digits"}
    cmd = [sys.executable, str(ROOT / "pipelines" / "run_local.py"), "optimise", "--pipeline-root", str(work / "runs")]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    log("optimise pipeline: " + " ".join(cmd[2:]))
    subprocess.run(cmd, check=True, cwd=work)
    summary = json.loads(sorted((work / "runs").glob("optimise-*/summary.json"))[-1].read_text())
    bench = next(t for t in summary["tasks"] if t["task"] == "benchmark")
    results = json.loads(Path(bench["artifacts"]["results"]).read_text())
    return {"summary": summary, "results": results, "parameters": sets}


def judge(results: dict, selected: str) -> list[dict]:
    rows = {r["name"]: r for r in results["variants"]}
    out = []
    for what, name, ref, most_ratio, most_points in TARGETS:
        name = selected if name == "selected" else name
        row, base = rows.get(name), rows.get(ref)
        if not row or not base:
            out.append({"target": what, "variant": name, "met": False, "note": "variant not measured"})
            continue
        ratio = row["latency_ms"]["p50"] / base["latency_ms"]["p50"]
        lost = 100 * (base["accuracy"] - row["accuracy"])
        out.append({"target": what, "variant": name, "p50_ms": row["latency_ms"]["p50"],
                    "reference_p50_ms": base["latency_ms"]["p50"], "p50_ratio": ratio, "most_ratio": most_ratio,
                    "points_lost": lost, "most_points": most_points,
                    "met": ratio <= most_ratio and lost <= most_points})
    return out


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# Bring your own model: torchvision ResNet-18 checkpoint, optimise pipeline with epochs 0", "",
             f"Machine: {m.get('cpu_model')} ({m.get('cpu_count')} logical CPUs), threads {doc['threads']}, "
             f"flags {', '.join(f for f in m.get('cpu_flags', []) if 'avx512' in f or 'vnni' in f) or 'n/a'}; "
             f"versions {json.dumps(m.get('versions', {}))}.", "",
             f"Selected: **{doc['selected']}** ({doc['reason']})", "",
             "| variant | accuracy | p50 ms | p95 ms | p99 ms | spread | size MB |", "|---|---|---|---|---|---|---|"]
    for r in doc["variants"]:
        lat = r["latency_ms"]
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {lat['p50']:.3f} | {lat['p95']:.3f} | {lat['p99']:.3f} | "
                     f"{100 * (lat.get('spread') or 0):.0f} % | {r['size_bytes'] / 1e6:.2f} |")
    lines += ["", "| target | variant | p50 ratio (most) | points lost (most) | met |", "|---|---|---|---|---|"]
    for t in doc["targets"]:
        if "p50_ratio" not in t:
            lines.append(f"| {t['target']} | {t['variant']} | - | - | no: {t['note']} |")
            continue
        lines.append(f"| {t['target']} | {t['variant']} | {t['p50_ratio']:.3f} ({t['most_ratio']:.3f}) | "
                     f"{t['points_lost']:.2f} ({t['most_points']}) | {'yes' if t['met'] else '**no**'} |")
    lines += ["", f"Checkpoint: {doc['checkpoint_epochs']} epochs of training on digits "
              f"3x{doc['image_size']}x{doc['image_size']}; pipeline parameters: `{json.dumps(doc['parameters'])}`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=6, help="training epochs of the user's checkpoint")
    p.add_argument("--finetune-epochs", type=int, default=6, help="fine-tuning epochs after pruning")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", default=str(ROOT / "build" / "bench-byom"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "byom.json"))
    p.add_argument("--reuse", action="store_true", help="reuse the checkpoint already in --work-dir")
    args = p.parse_args(argv)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ckpt = make_checkpoint(work, args)
    run = run_pipeline(work, ckpt, args)
    result = run["summary"]["result"]
    selected = result["selected_variant"]
    doc = {"selected": selected, "reason": result["reason"], "blessed": result["blessed"],
           "variants": [r for r in run["results"]["variants"] if r.get("latency_ms")],
           "targets": judge(run["results"], selected), "machine": run["results"].get("machine") or
           benchmarking.machine(args.threads), "threads": args.threads, "image_size": args.image_size,
           "checkpoint_epochs": args.epochs, "parameters": run["parameters"], "seconds": time.time() - t0}
    path = benchmarking.write_results(args.json, doc, markdown(doc))
    log(f"results: {args.json} and {path}")
    for t in doc["targets"]:
        log(f"target {t['target']}: {'met' if t['met'] else 'NOT met'} "
            f"({t.get('p50_ratio', float('nan')):.3f}x p50, {t.get('points_lost', float('nan')):.2f} points lost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
