"""The optimisation report: readable scatter labels, wrapped CPU flags, the baseline's status,
and unstable latency labelled wherever it is printed."""

import itertools
import re

import pytest

from modelpress.selection import report
from modelpress.selection import report_plots
from modelpress.selection import decision

FLAGS = sorted("avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 "
               "avx512vbmi avx512_vbmi2 avx512_bitalg avx512_vpopcntdq avx512ifma amx_bf16 amx_tile amx_int8 "
               "avx_vnni fma f16c sse4_1 sse4_2".split())


def _row(name, role="candidate", kind="onnx", acc=0.97, p50=1.0, stable=True, windows=None, size=10_000):
    return {"name": name, "role": role, "kind": kind, "accuracy": acc, "size_bytes": size, "gzip_bytes": size // 2,
            "params": 100, "macs": 1000, "throughput_per_s": 1000 / p50, "confusion_matrix": [[5, 1], [0, 6]],
            "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p95": p50 * 1.2, "p99": p50 * 1.5, "mean": p50,
                           "n": 100, "stable": stable, "windows": 10},
            "window_p50_ms": windows or [p50] * 3}


def _results(rows, flags=FLAGS):
    return {"variants": rows, "dataset": {"class_names": ["a", "b"]}, "gpu": [],
            "machine": {"cpu_model": "x", "cpu_count": 16, "threads": 2, "cpu_flags": flags, "vnni": True}}


@pytest.fixture
def unstable_chosen():
    """torch baseline, ONNX fp32, and an int8 variant that wins but whose windows did not settle."""
    rows = [_row("torch eager fp32", role="baseline", kind="torch", p50=1.0, size=40_000),
            _row("onnx fp32", role="baseline-onnx", p50=0.2, size=39_000),
            _row("dynamic int8", p50=0.0325, stable=False, windows=[0.05, 0.03, 0.045, 0.03], size=12_000)]
    results = _results(rows)
    out = decision.decide(results, decision.Policy(tolerance=0.01))
    assert out["decision"]["chosen"] == "dynamic int8"
    return results, out["decision"], out["blessing"]


def _overlap(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_scatter_labels_at_near_identical_points_do_not_overlap():
    points = [{"key": i + 1, "name": f"variant number {i}", "p50": 0.0325 + 1e-5 * i, "accuracy": 0.97 + 1e-5 * (i % 3),
               "stable": i != 4, "window_range": (0.03, 0.04)} for i in range(10)]
    fig, ax, labels = report_plots.latency_accuracy(points, "variant number 3", 0.96)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(i + 1) for i in range(10))  # only the labels
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not _overlap(a, b), (ax.texts[i].get_text(), ax.texts[j].get_text())
    for t, box in zip(labels, boxes):  # no label hides a marker
        x, y = ax.transData.transform(t.xy)
        assert not (box.x0 < x < box.x1 and box.y0 < y < box.y1)
    report_plots.pyplot().close(fig)


def test_placement_is_deterministic():
    points = [{"key": i, "name": str(i), "p50": 1.0, "accuracy": 0.9, "stable": True, "window_range": None}
              for i in range(6)]
    offsets = []
    for _ in range(2):
        fig, _, labels = report_plots.latency_accuracy(points, None, None)
        offsets.append([tuple(round(v, 6) for v in t.xyann) for t in labels])
        report_plots.pyplot().close(fig)
    assert offsets[0] == offsets[1]


def test_every_plotted_variant_is_in_the_key_table_beside_the_scatter():
    rows = [_row(f"quantised variant {i}", p50=0.0325 + 1e-5 * i) for i in range(10)]
    rows.insert(0, _row("torch eager fp32", role="baseline", kind="torch"))
    page = report.render_html(_results(rows))
    key = re.search(r"<table class='key'>(.*?)</table>", page).group(1)
    for i, r in enumerate(rows, start=1):
        assert f"<tr><td>{i}</td><td>{r['name']}</td>" in key


def test_cpu_flags_are_summarised_and_listed_in_full_in_a_wrapping_collapsible_block():
    page = report.render_html(_results([_row("torch eager fp32", role="baseline", kind="torch")]))
    details = re.search(r"<details><summary>all (\d+) flags</summary><div class='wrap flags'>(.*?)</div></details>",
                        page)
    assert details and int(details.group(1)) == len(FLAGS)
    assert details.group(2).split() == FLAGS
    assert re.search(r"\.wrap\{[^}]*overflow-wrap:anywhere", page)
    for flag in ("avx2", "avx512f", "avx512_vnni", "amx"):
        assert f"<span class='flag on'>{flag} ✓</span>" in page
    no_avx512 = report.render_html(_results([_row("t", role="baseline", kind="torch")], flags=["avx", "avx2"]))
    assert "<span class='flag off'>avx512f ✗</span>" in no_avx512
    assert "<span class='flag off'>amx ✗</span>" in no_avx512


def test_the_torch_baseline_is_shown_as_not_a_candidate(unstable_chosen):
    results, decision, blessing = unstable_chosen
    page = report.render_html(results, decision, blessing)
    row = re.search(r"<tr><td>torch eager fp32</td>(.*?)</tr>", page.split("<h2>Constraints</h2>")[1]).group(1)
    assert "baseline (not a candidate)" in row and "FAIL" not in row and "deployable" not in row
    assert "deployable: FAIL" not in page
    assert "Only ONNX variants are deployment candidates" in page
    onnx = re.search(r"<tr><td>onnx fp32</td>(.*?)</tr>", page.split("<h2>Constraints</h2>")[1]).group(1)
    assert "deployable: ok" in onnx and onnx.endswith("<td>yes</td>")


def test_a_non_deployable_candidate_is_not_called_a_failure():
    rows = [_row("torch eager fp32", role="baseline", kind="torch"), _row("onnx fp32", role="baseline-onnx"),
            _row("torch compiled", kind="torch", p50=0.1)]
    results = _results(rows)
    page = report.render_html(results, decision.select(results, decision.Policy()))
    assert "not a candidate (torch)¹" in page and "deployable: FAIL" not in page


def test_unstable_latency_is_labelled_everywhere_it_is_printed(unstable_chosen):
    results, decision, blessing = unstable_chosen
    page = report.render_html(results, decision, blessing)
    label = "0.0325 ms (unstable, spread 50 %)"  # last 3 windows 0.03..0.045
    body = page.split("<h2>Constraints</h2>")[0]
    assert f"<td>{label}*</td>" in body and "<td>no*</td>" in body
    assert "<p class='note'>* unstable:" in body
    headline = re.search(r"<p><b>Chosen:</b>(.*?)</p>", page).group(1)
    assert f"(0.0325 ms (unstable, spread 50 %))" in headline  # the reason's figure, annotated in place
    assert label in re.search(r"<p><b>Chosen variant:</b>(.*?)</p>", page).group(1)
    assert "<p class='warn'><b>Unstable latency:</b> dynamic int8: p50 " + label in page
    constraints = page.split("<h2>Constraints</h2>")[1].split("</table>")[0]
    assert label in constraints
    key = re.search(r"<table class='key'>(.*?)</table>", page).group(1)
    assert label in key
    # stable figures carry no label, and the other variants' rows are not marked
    main = page.split("<table>")[1].split("</table>")[0]
    assert "<td>0.2000 ms</td>" in main and main.count("unstable, spread") == 1
    md = report.markdown_table(results, decision)
    assert f"| {label}\\* |" in md and "\\* unstable:" in md


def test_every_latency_cell_has_its_unit(unstable_chosen):
    results, decision, blessing = unstable_chosen
    page = report.render_html(results, decision, blessing)
    main = page.split("<table>")[1].split("</table>")[0]
    for tr in re.findall(r"<tr(?: class=\"chosen\")?>(.*?)</tr>", main)[1:]:
        cells = re.findall(r"<td>(.*?)</td>", tr)
        assert all(re.match(r"^\d+\.\d{4} ms", c) for c in cells[3:7]), cells
    md = report.markdown_table(results, decision)
    for line in md.splitlines()[2:5]:
        assert all(re.match(r"^\d+\.\d{4} ms", c.strip()) for c in line.split("|")[4:7]), line


def test_a_stable_choice_has_no_warning_and_an_unstable_gpu_figure_is_labelled():
    rows = [_row("torch eager fp32", role="baseline", kind="torch"), _row("onnx fp32", role="baseline-onnx", p50=0.2)]
    results = _results(rows)
    results["gpu"] = [{"name": "torch cuda fp32", "latency_ms": {"p50": 0.05, "stable": False},
                       "throughput_per_s": 1e5}]
    out = decision.decide(results, decision.Policy())
    page = report.render_html(results, out["decision"], out["blessing"])
    assert "class='warn'" not in page and "unstable, spread" not in page
    assert "torch cuda fp32: p50 0.0500 ms (unstable), 100,000 rows/s" in page
    assert "(0.2 ms)" in re.search(r"<p><b>Chosen:</b>(.*?)</p>", page).group(1)


def test_decision_text_gives_units_for_every_objective():
    rows = [_row("torch eager fp32", role="baseline", kind="torch"), _row("onnx fp32", role="baseline-onnx")]
    results = _results(rows)
    for objective, unit in (("size", "bytes"), ("throughput", "rows/s"), ("p95", "ms")):
        chosen = decision.select(results, decision.Policy(objective=objective))
        assert re.search(rf"\([\d.e+]+ {re.escape(unit)}\)", report.decision_text(results, chosen)), objective
