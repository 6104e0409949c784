"""export/reproduce.py end to end in quick mode: runs, export, parity, docs; then resumes."""

import json
import shutil

import pytest
from conftest import REPO, run_script


def test_a_report_keeps_the_recipes_it_did_not_report_in_their_order():
    from edgeconv.export.reproduce import keep_previous

    previous = {part: {"baseline": f"old {part}", "plus": f"old {part}"}
                for part in ("recipes", "exported", "recipe_definitions", "curves")}
    previous["exported"].pop("baseline")
    report = {part: {"plus": f"new {part}"}
              for part in ("recipes", "exported", "recipe_definitions", "curves")}
    assert keep_previous(report, previous) == ["baseline"]
    assert report["recipes"] == {"baseline": "old recipes", "plus": "new recipes"}
    assert report["exported"] == {"plus": "new exported"}
    assert list(report["curves"]) == ["baseline", "plus"]
    assert keep_previous(report, {}) == [] and list(report["recipes"]) == ["baseline", "plus"]


def test_page_only_rewrites_the_page_from_results_json_and_the_notes(tmp_path, capsys):
    from edgeconv.export.reproduce import main

    docs = tmp_path / "results.md"
    assert main(["--docs", str(docs), "--page-only"]) == 2  # nothing to write it from
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'results.json'}: holds no results to write the page from; run "
        "export/reproduce.py without --page-only first")

    shutil.copy(REPO / "docs" / "results.json", tmp_path)
    report = json.loads((tmp_path / "results.json").read_text())
    (tmp_path / "results_notes.md").write_text("## A finding\n\nWritten by hand.\n")
    assert main(["--docs", str(docs), "--page-only"]) == 2  # no curves, no figure to keep
    assert "keeps no curves" in capsys.readouterr().err

    figure = tmp_path / "results_curves.png"
    figure.write_bytes(b"the earlier report's figure")
    assert main(["--docs", str(docs), "--page-only"]) == 0
    page = docs.read_text()
    assert page.endswith("## A finding\n\nWritten by hand.\n")
    for stats in report["recipes"].values():
        assert f"{100 * stats['test_accuracy']['mean']:.1f}%" in page
    assert "No curves are kept" not in page  # the kept figure shows every recipe's
    assert figure.read_bytes() == b"the earlier report's figure"

    history = {"accuracy": [0.6, 0.8], "loss": [0.7, 0.5], "val_accuracy": [0.55, 0.7],
               "val_loss": [0.72, 0.6]}
    report["curves"] = {"plus": {"seed": 0, "history": history}}
    (tmp_path / "results.json").write_text(json.dumps(report))
    assert main(["--docs", str(docs), "--page-only"]) == 0
    assert figure.read_bytes().startswith(b"\x89PNG")  # redrawn from the kept curves
    kept = [recipe for recipe in report["recipes"] if recipe != "plus"]
    assert f"No curves are kept for {', '.join(kept)}" in docs.read_text()


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe",
                                     b'{"recipes": {"plus": {"epochs": 120}}}'])
def test_a_damaged_results_json_is_a_one_line_error_before_any_training(real_data, tmp_path,
                                                                       content):
    numbers = tmp_path / "docs" / "results.json"
    numbers.parent.mkdir()
    numbers.write_bytes(content)
    result = run_script("export/reproduce.py", "--data", real_data, "--out", tmp_path / "runs",
                        "--docs", tmp_path / "docs" / "results.md")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {numbers} is not a results.json that export/reproduce.py wrote; move it away "
        "to start the page afresh"]
    assert not (tmp_path / "runs").exists() and numbers.read_bytes() == content


@pytest.mark.slow
def test_reproduce_writes_results_and_skips_finished_runs(real_data, tmp_path):
    args = ["export/reproduce.py", "--data", real_data, "--out", tmp_path / "results",
            "--recipes", "baseline,augmented", "--seeds", "0,1", "--epochs", "1",
            "--limit", "20", "--docs",
            tmp_path / "docs" / "results.md", "--models", tmp_path / "models"]
    first = run_script(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    docs = tmp_path / "docs"
    numbers = json.loads((docs / "results.json").read_text())
    for recipe in ("baseline", "augmented"):
        stats = numbers["recipes"][recipe]["test_accuracy"]
        assert stats["n"] == 2 and stats["min"] <= stats["mean"] <= stats["max"]
        assert numbers["recipes"][recipe]["seeds"] == [0, 1]
    assert list(numbers["exported"]) == ["augmented"]  # the baseline is not deployed
    parity = numbers["exported"]["augmented"]["parity"]
    assert {row["artifact"] for row in parity} == {"model_int8.tflite", "model_int8.onnx"}
    assert all(row["images"] == 2 * 20 for row in parity)  # --limit holds for the test split too
    text = (docs / "results.md").read_text()
    assert "| baseline | 1 |" in text and "| augmented | 1 |" in text
    assert "--recipes baseline,augmented --seeds 0,1 --epochs 1 --limit 20" in text
    assert "| model_int8.tflite |" in text
    assert (docs / "results_curves.png").read_bytes()[:4] == b"\x89PNG"
    shipped = json.loads((tmp_path / "models" / "models.json").read_text())
    assert list(shipped) == ["augmented"]  # the exported run, its int8 files, no Keras file
    assert [f["file"] for f in shipped["augmented"]["files"]] == [
        "augmented_int8.tflite", "augmented_int8.onnx"]
    card = (tmp_path / "models" / "README.md").read_text()
    assert "## augmented (`augmented-seed" in card and "--epochs 1 --limit 20" in card

    again = run_script(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== " not in again.stdout  # every run was already finished: nothing retrained

    report_only = run_script(*[a if a != "baseline,augmented" else "baseline,augmented,plus"
                               for a in args], "--no-train")
    assert report_only.returncode == 0, report_only.stderr[-3000:]
    assert "-- plus, seed 0: not finished, left out" in report_only.stdout
    assert "== " not in report_only.stdout
    assert list(json.loads((docs / "results.json").read_text())["recipes"]) == ["baseline",
                                                                                "augmented"]

    # One recipe reported again: its rows are rewritten, the other recipe's are kept.
    one = run_script(*[a if a != "baseline,augmented" else "augmented" for a in args],
                     "--no-train")
    assert one.returncode == 0, one.stderr[-3000:]
    assert f"kept baseline from {docs / 'results.json'}" in one.stdout
    numbers = json.loads((docs / "results.json").read_text())
    assert list(numbers["recipes"]) == list(numbers["curves"]) == ["baseline", "augmented"]
    text = (docs / "results.md").read_text()
    assert "| baseline | 1 |" in text and "| augmented | 1 |" in text
    # baseline's command is the one that last reported it: every recipe, so no --recipes
    assert "- baseline: Reproduce with `python export/reproduce.py --data DIR --seeds 0,1 " \
        "--epochs 1" in text
    assert "- augmented: Reproduce with `python export/reproduce.py --data DIR --recipes " \
        "augmented --seeds 0,1" in text
