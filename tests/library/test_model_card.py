"""Model cards: a deployed version's card names its data, each lineage step with its settings, the
test metrics, the speed, the size and the blessing, read from what the steps recorded.

The chosen folder is made as the optimise pipeline makes it, with the library's own steps:
train -> prune -> export-onnx -> quantise -> benchmark (beside the deployed champion) -> select.
"""

from __future__ import annotations

import json

import pytest

from modelpress.deploy import card, repository
from modelpress.deploy.card_markdown import summary
from modelpress.deploy.vertex import card_labels, label_value
from modelpress.export import runtime

QUIET = lambda s: None  # noqa: E731


@pytest.fixture(scope="module")
def made(tmp_path_factory, digits_dir):
    """A repository holding champion v1 (the plain export) and v2, the quantised model the select
    step chose and blessed against v1; and the benchmark results the select step read."""
    from modelpress import training
    from modelpress.compression import pruning, quantisation
    from modelpress.export import onnx_export
    from modelpress.selection import comparison, decision

    root = tmp_path_factory.mktemp("card")
    train, pruned, onnx, quant = (str(root / n) for n in ("train", "prune", "onnx", "quantised"))
    training.train(digits_dir, train, architecture="mlp", model_args={"hidden": [32]},
                   settings=training.TrainSettings(epochs=3, seed=0), log=QUIET)
    pruning.prune(train, digits_dir, pruned, method="structured", amount=0.25,
                  settings=training.TrainSettings(epochs=1), log=QUIET)
    onnx_export.export_onnx(pruned, digits_dir, onnx, log=QUIET)
    q = quantisation.quantise(onnx, digits_dir, quant, method="dynamic-int8", log=QUIET)
    repo = root / "repo"
    repository.deploy(onnx, repo, "digits", extra_meta={"variant": "onnx fp32"})  # the champion
    variants = comparison.with_champion(comparison.optimisation_variants(train, onnx, quantised=[(quant, q["metadata"])]),
                                        str(repo), "digits", log=QUIET)
    results = root / "results.json"
    comparison.benchmark(variants, digits_dir, str(results), window_seconds=0.02, max_windows=3, log=QUIET)
    # a size budget only the int8 model meets, so the select step picks it on p50 among one
    policy = decision.Policy(tolerance=0.5, accuracy_floor=0.1, size_budget_bytes=runtime.read_meta(quant)["size_bytes"])
    chosen = root / "chosen"
    out = decision.write_decision(str(results), policy, str(chosen), str(root / "r.html"), str(root / "t.md"), log=QUIET)
    version = repository.deploy(chosen, repo, "digits", extra_meta={"variant": out["variant"]})
    return {"repo": repo, "version": repo / "digits" / str(version), "chosen": chosen, "out": out,
            "results": json.loads(results.read_text())}


def test_the_deployed_card_names_data_lineage_metrics_speed_size_and_blessing(made):
    folder = made["version"]
    md = (folder / card.CARD_MD).read_text()
    doc = json.loads((folder / card.CARD_JSON).read_text())
    assert made["out"]["variant"] == "dynamic-int8" and made["out"]["blessed"]
    assert md.startswith("# Model card: digits version 2\n")
    # the data: source, split sizes, classes, what to send
    assert "- **Source:** digits" in md and "train 1167, validation 270, test 360" in md
    assert "- **Classes (10):** 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in md
    assert "- **Value range:** [0.0, 16.0]" in md and "- **Layout:** NCHW" in md
    # every step, with its settings, in order
    steps = [s["step"] for s in doc["model_parameters"]["lineage"]]
    assert steps == ["train", "prune", "export-onnx", "quantise", "select"]
    assert "1. **train**: start scratch, architecture mlp" in md and "epochs 3, learning_rate 0.002" in md
    assert "2. **prune**: amount 0.25" in md and "method structured" in md
    assert "3. **export-onnx**: opset 18" in md
    assert "4. **quantise**: method dynamic-int8, per_channel true" in md
    assert "5. **select**: chosen dynamic-int8" in md and "objective p50" in md
    # the test metric the quantise step scored
    accuracy = runtime.read_meta(made["chosen"])["accuracy"]
    assert f"- **Accuracy:** {accuracy:.4g}" in md
    assert doc["quantitative_analysis"]["performance_metrics"] == [{"type": "accuracy", "value": accuracy,
                                                                     "slice": "test"}]
    # speed (the select step's p50 for it) and size (the deployed file's bytes)
    row = next(r for r in made["results"]["variants"] if r["name"] == "dynamic-int8")
    assert f"p50 {row['latency_ms']['p50']:.4g} ms" in md
    assert f"- **Model file:** {(folder / 'model.onnx').stat().st_size:,} bytes" in md
    # the blessing and the champion it was compared with
    assert "- **Blessing:** **blessed**:" in md and "vs champion" in md
    assert "- **Champion compared with:** champion v1" in md
    # the owner's fields, clearly marked
    assert md.count(card.FILL) >= 6 and "- **Users:** TO FILL IN" in md


def test_the_champion_card_says_it_was_not_selected(made):
    md = (made["repo"] / "digits" / "1" / card.CARD_MD).read_text()
    assert "deployed without the select step (no decision.json)" in md
    assert [s["step"] for s in card.read(made["repo"] / "digits" / "1", "json")["model_parameters"]["lineage"]] == \
        ["train", "prune", "export-onnx"]


def test_the_benchmark_row_and_machine_fill_speed_and_confusion_matrix(made, tmp_path):
    """When decision.json carries the chosen benchmark row and the machine (what the select step
    read from the results), the card gives p50/p95/p99, throughput, the machine and the matrix."""
    import shutil

    folder = tmp_path / "chosen"
    shutil.copytree(made["chosen"], folder)
    row = next(r for r in made["results"]["variants"] if r["name"] == "dynamic-int8")
    doc = json.loads((folder / card.DECISION_FILE).read_text())
    (folder / card.DECISION_FILE).write_text(json.dumps({**doc, "chosen_row": row,
                                                         "machine": made["results"]["machine"]}))
    built = card.build(folder, name="digits", version=3)
    card.write(tmp_path, built)
    md = (tmp_path / card.CARD_MD).read_text()
    lat = row["latency_ms"]
    assert f"p95 {lat['p95']:.4g} ms, p99 {lat['p99']:.4g} ms" in md
    assert f"- **Throughput:** {row['throughput_per_s']:,.0f} rows/s at batch 64" in md
    assert f"({row['gzip_bytes']:,} gzipped)" in md
    machine = made["results"]["machine"]
    assert f"cpu_model {machine['cpu_model']}" in md and "threads 2" in md and "onnxruntime" in md
    assert "Confusion matrix (rows: true class, columns: predicted):" in md
    assert sum(map(sum, built["quantitative_analysis"]["confusion_matrix"])) == 360


def test_a_students_lineage_names_its_teachers_training_and_the_distillation(digits_dir, mlp_dir, tmp_path):
    from modelpress import training
    from modelpress.compression import distillation
    from modelpress.export import onnx_export

    student, onnx = str(tmp_path / "student"), str(tmp_path / "onnx")
    distillation.distil(mlp_dir[0], digits_dir, student, student_architecture="mlp", student_args={"hidden": [16]},
                        temperature=3.0, alpha=0.8, settings=training.TrainSettings(epochs=1), log=QUIET)
    onnx_export.export_onnx(student, digits_dir, onnx, log=QUIET)
    steps = card.build(onnx, name="digits")["model_parameters"]["lineage"]
    assert [s["step"] for s in steps] == ["train (teacher)", "distil", "export-onnx"]
    assert steps[0]["settings"]["epochs"] == 8 and steps[0]["settings"]["start"] == "scratch"  # conftest's mlp
    assert steps[1]["settings"]["temperature"] == 3.0 and steps[1]["settings"]["alpha"] == 0.8
    assert steps[1]["settings"]["student_args"]["hidden"] == [16]


def test_the_owner_fields_carry_over_to_the_next_version(made, tmp_path):
    repo = tmp_path / "repo"
    repository.deploy(made["chosen"], repo, "digits")
    first = card.read(repo / "digits" / "1", "json")
    first["considerations"]["limitations"] = [{"description": "digits scanned at 8x8 only"}]
    first["model_details"]["owners"] = [{"name": "vision team", "contact": "vision@example.com"}]
    (repo / "digits" / "1" / card.CARD_JSON).write_text(json.dumps(first))
    repository.deploy(made["chosen"], repo, "digits")
    md = (repo / "digits" / "2" / card.CARD_MD).read_text()
    assert "- **Limitations:** digits scanned at 8x8 only" in md
    assert "- **Owners:** vision team (vision@example.com)" in md
    assert "- **Users:** TO FILL IN" in md  # what the owner left unfilled stays marked


def test_the_vertex_summary_fits_and_points_at_the_full_card(made):
    doc = card.read(made["version"], "json")
    pointer = "gs://bucket/run/deploy-vertex/served/digits/2/model_card.md"
    full = summary(doc, 2000, pointer)
    assert full.startswith("digits: dynamic-int8 (int8-dynamic mlp), classification on digits; blessed")
    assert "Lineage: train -> prune -> export-onnx -> quantise -> select" in full
    short = summary(doc, 200, pointer)  # whole lines only, the pointer always kept
    assert len(short) <= 200 and short.endswith(f"Full card: {pointer}")
    assert short.splitlines()[0] == full.splitlines()[0]
    labels = card_labels(doc)
    assert labels == {"variant": "dynamic-int8", "task": "classification", "precision": "int8-dynamic",
                      "blessed": "true", "accuracy_pct": str(int(doc["quantitative_analysis"]["performance_metrics"][0]
                                                                  ["value"] * 100))}
    value = label_value("Pruned Static-INT8 / v2.1" + "x" * 80)  # Google Cloud's label rules
    assert value == ("pruned_static-int8_v2_1" + "x" * 80)[:63] and len(value) == 63


def test_a_folder_without_a_card_is_a_clear_error(tmp_path):
    from modelpress.core.errors import ModelpressError

    with pytest.raises(ModelpressError, match="has no model_card.md: it was deployed before model cards"):
        card.read(tmp_path)
