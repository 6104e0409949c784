"""benchmarks/formats.py: one row per format, statuses, JSON schema (not the timings)."""

import json
import shutil

from conftest import ARTIFACTS, confident_photos, run_script

from edgeconv.runtime.classifier import Classifier

ROW_KEYS = {"run", "format", "file", "status", "macs_per_image", "size_mb", "accuracy",
            "agreement", "ms_p50", "ms_range", "images_per_second", "best_batch",
            "cold_start_s", "peak_rss_mb"}


def test_benchmark_exports_what_is_missing_and_reports_a_broken_format(exported, real_data,
                                                                       tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    (run_dir / "model_dynamic.tflite").unlink()  # missing: the benchmark exports it
    (run_dir / "model_float16.tflite").write_bytes(b"TFL3 but cut short")  # broken
    test_cats = tmp_path / "data" / "cats"
    test_cats.mkdir(parents=True)
    for photo in confident_photos(exported, real_data / "test" / "cats", 10):
        shutil.copy(photo, test_cats)
    photos = sorted(test_cats.iterdir())
    result = run_script("benchmarks/formats.py", run_dir, "--data", tmp_path / "data",
                        "--threads", "1,2", "--repeat", "1", "--json", tmp_path / "b.json",
                        "--report", tmp_path / "b.md", "--log", tmp_path / "runs.log",
                        cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]  # one row is not ok
    report = json.loads((tmp_path / "b.json").read_text())
    rows = {row["file"]: row for row in report["rows"]}
    assert list(rows) == ["model.keras", *ARTIFACTS]
    assert all(set(row) == ROW_KEYS for row in rows.values())
    assert rows["model_float16.tflite"]["status"].startswith("failed:")
    assert (run_dir / "model_dynamic.tflite").exists()
    for name, row in rows.items():
        if name == "model_float16.tflite":
            continue
        assert row["status"] == "ok", (name, row["status"])
        assert set(row["ms_p50"]) == {"1", "2"} and row["images_per_second"] > 0
        assert row["cold_start_s"] > 0 and row["peak_rss_mb"] > 0
        if name != "model.keras":  # the device's own answers on the ten photos, all cats
            labels = [p.label for p in Classifier(run_dir / name).predict_batch(photos)]
            assert row["accuracy"] == labels.count("cats") / len(photos), name
    assert rows["model_float32.tflite"]["agreement"] == 1.0
    assert {row["macs_per_image"] for row in rows.values()} == {236_095_488}
    assert "run: 236 M multiply-accumulates per image; TFLite int8 at" in result.stdout
    table = (tmp_path / "b.md").read_text()
    assert table.count("\n| ") == 9  # header, alignment row, 7 rows
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "runs.log").read_text().splitlines()) == 1
    assert not (tmp_path / "benchmarks.log").exists()  # nothing written unless asked


def test_benchmark_compares_chosen_formats_across_runs(exported, real_data, tmp_path):
    for name in ("seed", "other"):
        shutil.copytree(exported, tmp_path / name)
    test_dogs = tmp_path / "data" / "dogs"
    test_dogs.mkdir(parents=True)
    for photo in confident_photos(exported, real_data / "test" / "dogs", 4):
        shutil.copy(photo, test_dogs)
    result = run_script("benchmarks/formats.py", tmp_path / "seed", tmp_path / "other",
                        "--formats", "tflite INT8", "--data", tmp_path / "data", "--threads", "1",
                        "--repeat", "1", "--json", tmp_path / "b.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(row["run"], row["format"]) for row in rows] == [("seed", "TFLite int8"),
                                                             ("other", "TFLite int8")]
    assert "| run | format |" in result.stdout and "| other | TFLite int8 | ok |" in result.stdout


def test_benchmark_rejects_an_unknown_format(exported, tmp_path):
    result = run_script("benchmarks/formats.py", exported, "--formats", "tflite int4",
                        cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown format 'tflite int4'" in result.stderr and "Traceback" not in result.stderr
