"""Benchmark text classifiers side by side: every variant scored on the same test texts and timed
at two sequence lengths, the training split's 95th-percentile token length (what most requests
look like: the headline latency that selection reads) and `max_length` (the worst case).

At each length: batch-1 latency in measurement windows with the stability rule, variants
interleaved (`benchmarking.measure_windows`), and batch-32 throughput. Each variant tokenises the
same strings with its own tokenizer (the folder beside its model; the dataset's otherwise), so a
deployed champion trained with another tokenizer is scored and timed fairly; every feed has
exactly the length measured (long strings built from the test texts, truncated there).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path, write_json_atomic
from modelpress.core.results import Variant
from modelpress.data.text import TextDataset, load_text_dataset
from modelpress.data.tokenizer import load_tokenizer, tokenize
from modelpress.evaluation import quality_metric, score_outputs
from modelpress.export import runtime
from modelpress.export.text_runtime import OUTPUT_NAME, graph_inputs
from modelpress.models import text as text_models
from modelpress.models import text_sources
from modelpress.selection import benchmarking, quality
from modelpress.selection.report import stability_label

THROUGHPUT_BATCH = 32
SCORE_BATCH = 32


def measured_lengths(ds: TextDataset) -> dict[str, int]:
    """{"p95": the training split's 95th-percentile token length, "max_length": the truncation length}."""
    return {"p95": int(np.clip(ds.schema["token_lengths"]["p95"], 2, ds.max_length)), "max_length": ds.max_length}


def long_texts(texts: list[str], count: int, max_length: int) -> list[str]:
    """`count` strings, each test texts joined from a different start until it is long enough to fill
    max_length tokens once truncated (checked by the feed), and not all the same."""
    enough = 16 * max_length  # characters: several per token in any real text
    joined = []
    for k in range(count):
        parts, size, i = [], 0, (k * 7) % len(texts)
        while size < enough and len(parts) < len(texts):
            parts.append(texts[i])
            size += len(texts[i]) + 1
            i = (i + 1) % len(texts)
        joined.append(" ".join(parts))
    return joined


class _Model:
    """One variant: its tokenizer, the inputs it takes and a `run(feed) -> logits`."""

    def __init__(self, v: Variant, ds: TextDataset, threads: int):
        import onnxruntime as ort
        import torch

        folder = local_path(v.path)
        own = folder / text_models.TOKENIZER_DIR
        self.tokenizer = load_tokenizer(own if own.is_dir() else ds.tokenizer_dir)
        self.max_length = int(runtime.read_meta(folder).get("max_length") or ds.max_length) if v.kind == "onnx" \
            else ds.max_length
        if v.kind == "torch":
            model, _ = text_models.load_text_model(str(folder))
            model.eval()
            torch.set_num_threads(threads)
            self.names = text_models.model_inputs(model)

            def run(feed):
                with torch.inference_mode():
                    return model(**{k: torch.from_numpy(a) for k, a in feed.items()}).logits.numpy()
            self.run = run
            self.params = sum(p.numel() for p in model.parameters())
            self.flops_at = lambda length: text_sources.text_forward_flops(model, length)
            self.runtime = f"torch {torch.__version__} eager CPU"
        else:
            source = runtime.onnx_file(folder)
            self.names = graph_inputs(source)
            sess = runtime.session(source, threads=threads)
            self.run = lambda feed: sess.run([OUTPUT_NAME], feed)[0]
            meta = runtime.read_meta(folder)
            self.params = meta.get("params")
            self.flops_at = None
            self.runtime = f"onnxruntime {ort.__version__} CPUExecutionProvider"

    def feed(self, texts: list[str], length: int | None = None) -> dict[str, np.ndarray]:
        arrays = tokenize(texts, self.tokenizer, length or self.max_length)
        if length and arrays["input_ids"].shape[1] != length:
            raise ModelpressError(f"the test texts make only {arrays['input_ids'].shape[1]} tokens, fewer than the "
                                  f"{length} to measure at; the dataset is too small to benchmark this length")
        return {n: arrays[n] for n in self.names}

    def logits(self, texts: list[str]) -> np.ndarray:
        return np.concatenate([self.run(self.feed(texts[i:i + SCORE_BATCH]))
                               for i in range(0, len(texts), SCORE_BATCH)]).astype(np.float32)


def benchmark_text(variants: list[Variant], dataset_dir: str, out_json: str, *, threads: int = 2,
                   window_seconds: float = 0.5, max_windows: int = 10, left_out: list | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Measure text `variants` (already checked for presence and unique names); write the results JSON."""
    t_start = time.perf_counter()
    ds = load_text_dataset(dataset_dir)
    metric = quality_metric("classification")
    lengths = measured_lengths(ds)
    texts = ds.test.texts
    batch_texts = long_texts(texts, THROUGHPUT_BATCH, ds.max_length)
    rows, loaded = [], {}
    for v in variants:
        file = local_path(v.path) / (text_models.SPEC_FILE if v.kind == "torch" else runtime.ONNX_FILE)
        weights = next((local_path(v.path) / w for w in text_models.SAFE_WEIGHTS if (local_path(v.path) / w).exists()),
                       file) if v.kind == "torch" else file
        meta = {**(runtime.read_meta(v.path) if v.kind == "onnx" else {}), **dict(v.metadata or {})}
        row = {"name": v.name, "role": v.role.value, "kind": v.kind, "task": "classification",
               "path": str(local_path(v.path)), "file": str(weights), "sha256": benchmarking.sha256(weights),
               **benchmarking.file_sizes(weights), "precision": meta.get("precision", "fp32"), "note": None}
        try:
            m = _Model(v, ds, threads)
            scores = score_outputs(m.logits(texts), ds.test.y, "classification", len(ds.class_names))
        except Exception as exc:  # noqa: BLE001 -- one variant that cannot run (a champion of another era) is noted
            row["note"] = f"cannot be scored on this text dataset: {str(exc)[:200]}"
            rows.append({**row, "accuracy": None, "latency_ms": None, "throughput_per_s": None, "runtime": None})
            log(f"[benchmark] {v.name}: {row['note']}")
            continue
        row.update(accuracy=scores["accuracy"], confusion_matrix=scores["confusion_matrix"], runtime=m.runtime,
                   params=m.params if m.params is not None else meta.get("params"))
        flops = m.flops_at(lengths["p95"]) if m.flops_at else meta.get("flops")
        row["macs"] = flops // 2 if flops else None
        loaded[v.name] = m
        rows.append(row)
    log(f"[benchmark] {len(loaded)} text variants on the CPU with {threads} thread(s), at the p95 length "
        f"({lengths['p95']} tokens) and max_length ({lengths['max_length']}): batch-1 latency in {window_seconds}s "
        f"windows, batch-{THROUGHPUT_BATCH} throughput")
    figures = {}
    for key, length in lengths.items():
        ones = {n: m.feed(batch_texts[:1], length) for n, m in loaded.items()}
        many = {n: m.feed(batch_texts, length) for n, m in loaded.items()}
        # runners close over their own feed (each variant's tokenizer and inputs); the shared
        # argument the measuring functions pass is unused, and its length is the batch counted
        one_runners = {n: (lambda _x, m=m, f=ones[n]: m.run(f)) for n, m in loaded.items()}
        many_runners = {n: (lambda _x, m=m, f=many[n]: m.run(f)) for n, m in loaded.items()}
        log(f"[benchmark] sequence length {length} ({key})")
        lat = benchmarking.measure_windows(one_runners, np.zeros(1), window_seconds=window_seconds,
                                           max_windows=max_windows, log=log)
        thr = benchmarking.measure_throughput(many_runners, np.zeros(THROUGHPUT_BATCH), rounds=3, iters=3)
        figures[key] = (lat, thr)
    for row in rows:
        if row["name"] not in loaded:
            continue
        for key, suffix in (("p95", ""), ("max_length", "_max_length")):
            lat, thr = figures[key]
            row[f"latency{suffix}_ms"] = {k: val for k, val in lat[row["name"]].items() if k != "window_p50_ms"}
            row[f"window_p50{suffix}_ms"] = lat[row["name"]]["window_p50_ms"]
            row[f"throughput{suffix}_per_s"] = thr[row["name"]]
        row["throughput_batch"] = THROUGHPUT_BATCH
        row["sequence_lengths"] = lengths
    seconds = time.perf_counter() - t_start
    result = {"task": "classification", "input_kind": "text", "quality_metric": quality.describe(metric),
              "variants": rows, "left_out": list(left_out or []), "gpu": [],
              "machine": {**benchmarking.machine(threads), "cpu_peak": None},
              "dataset": {"source": ds.schema["source"], "test_examples": int(len(ds.test.y)),
                          "class_names": ds.class_names, "token_lengths": ds.schema["token_lengths"]},
              "settings": {"threads": threads, "throughput_batch": THROUGHPUT_BATCH, "window_seconds": window_seconds,
                           "max_windows": max_windows, "sequence_lengths": lengths,
                           "headline": f"batch-1 latency at the p95 length ({lengths['p95']} tokens)"},
              "work_seconds": seconds}
    write_json_atomic(out_json, result)
    for row in rows:
        if row.get("latency_ms"):
            log(f"[benchmark] {row['name']:<28} {quality.said('accuracy', row['accuracy'])}  "
                f"p50 {row['latency_ms']['p50']:.3f} ms @{lengths['p95']}  "
                f"{row['latency_max_length_ms']['p50']:.3f} ms @{lengths['max_length']}  "
                f"{row['throughput_per_s']:.0f}/s @batch {THROUGHPUT_BATCH}  {row['size_bytes'] / 1e3:,.0f} kB  "
                f"{stability_label(row).strip() or 'stable'}")
    return result

