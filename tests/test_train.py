"""train/run.py end to end on real photos: artifacts, resume after SIGKILL, errors, JAX."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import REPO, as_from_a_terminal, run_script


@pytest.fixture(scope="module")
def quick_run(trained_run):
    return trained_run


def test_short_real_run_learns_and_writes_every_artifact(quick_run, real_data):
    out, result = quick_run
    history = json.loads((out / "history.json").read_text())
    assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 10
    assert history["loss"][-1] < history["loss"][0]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"] == 3_453_121
    assert metrics["classes"] == ["cats", "dogs"]
    assert metrics["recipe"] == "baseline" and metrics["epochs"] == 10
    assert metrics["backend"] == "tensorflow" and metrics["keras_version"] == keras.__version__
    assert np.array(metrics["confusion_matrix"]).sum() == 300  # 150 test photos per class
    confusion = np.array(metrics["confusion_matrix"])
    assert metrics["test_accuracy"] == np.trace(confusion) / confusion.sum()
    assert metrics["images_per_second"] > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("checkpoint-*.keras")), "finished runs drop the checkpoint"
    assert "test accuracy" in result.stdout


def test_saved_model_is_float32_and_reproduces_the_reported_accuracy(quick_run, real_data):
    out, _ = quick_run
    from edgeconv.train.dataset import find_dataset, load_split
    from edgeconv.train.session import predict_labels

    model = keras.saving.load_model(out / "model.keras")
    assert {w.dtype for w in model.weights} == {"float32"}
    assert all(layer.compute_dtype == "float32" for layer in model.layers)
    images, labels = load_split(find_dataset(real_data, limit=150), "test")
    predicted = predict_labels(model, images)
    metrics = json.loads((out / "metrics.json").read_text())
    assert float((predicted == labels).mean()) == pytest.approx(metrics["test_accuracy"])


def test_the_same_out_folder_is_refused_without_resume(quick_run, real_data):
    out, _ = quick_run
    again = run_script("train/run.py", "--data", real_data, "--limit", "150", "--epochs", "10",
                       "--out", out)
    assert again.returncode == 2 and "--resume" in again.stderr
    other = run_script("train/run.py", "--data", real_data, "--recipe", "augmented",
                       "--limit", "150", "--out", out, "--resume")
    assert other.returncode == 2 and "different run" in other.stderr
    assert "Traceback" not in again.stderr + other.stderr


def start_and_wait_for_first_epoch(args: list) -> subprocess.Popen:
    """Start train/run.py and return once its first epoch is checkpointed."""
    out = args[args.index("--out") + 1]
    process = subprocess.Popen([sys.executable, str(REPO / "train/run.py"), *map(str, args)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=as_from_a_terminal)
    state_file = out / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if state_file.exists() and json.loads(state_file.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    assert process.poll() is None, "training ended before it could be stopped"
    return process


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_the_resume_command(real_data, tmp_path):
    out = tmp_path / "interrupted"
    args = ["--data", real_data, "--limit", "50", "--epochs", "5", "--batch-size", "8",
            "--out", out]
    process = start_and_wait_for_first_epoch(args)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted:" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert json.loads((out / "state.json").read_text())["epoch"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("recipe, settings", [
    pytest.param("augmented", {}, id="augmented"),
    # two epochs at 64x64 (validated at the second only), then two at 150x150, CutMix,
    # MixUp, weight averages: killed in either phase
    pytest.param("plus", {"sizes": [[64, 0.5], [150, 0.5]], "cutmix": 1.0, "mixup": 0.2,
                          "ema": 0.9},
                 id="plus-progressive-mixed"),
])
def test_resume_after_sigkill_continues_from_the_last_whole_epoch(real_data, tmp_path, recipe,
                                                                  settings):
    out = tmp_path / "killed"
    epochs = 4 if "sizes" in settings else 3
    args = ["--data", real_data, "--recipe", recipe, "--limit", "50", "--epochs", str(epochs),
            "--batch-size", "8", "--out", out]
    for key, value in settings.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    process = start_and_wait_for_first_epoch(args)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    state_file = out / "state.json"
    before = json.loads(state_file.read_text())
    assert 1 <= before["epoch"] < epochs and (out / before["checkpoint"]).exists()
    assert not (out / "model.keras").exists()

    resumed = run_script("train/run.py", "--out", out, "--resume")  # the run's own settings
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out} after epoch {before['epoch']} of {epochs}" in resumed.stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == epochs
    assert history["loss"][: before["epoch"]] == before["history"]["loss"]
    assert (out / "model.keras").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == recipe
    # the saved model is the one the last epoch validated (with ema: the averaged weights)
    assert metrics["val_accuracy"] == pytest.approx(history["val_accuracy"][-1], abs=1e-6)
    if recipe == "plus":  # its --set survived the resume; its model is inside the budget
        assert metrics["settings"] == settings
        assert all(metrics["recipe_definition"][key] == value for key, value in settings.items())
        assert metrics["params"] < 1_000_000 and metrics["macs_per_image"] <= 250_000_000
        assert metrics["input_shape"] == [150, 150, 3]
    if "sizes" in settings:  # the phases as planned, whichever epoch the kill fell in
        left = "epochs 3-4" if before["epoch"] <= 2 else "epoch 4"
        assert f"{left} at 150x150" in resumed.stdout
        assert ("epoch 2 at 64x64" in resumed.stdout) == (before["epoch"] == 1)
        # the small phase validated at its end only (at 150, its BatchNorm reads 64x64 photos)
        assert history["val_epochs"] == [2, 3, 4] and len(history["val_accuracy"]) == 3
        # against each target's larger share (mixed targets never equal 0 or 1 exactly)
        assert min(history["accuracy"]) > 0.2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/photos"], "data folder not found"),
        (["--data", "{tmp}"], "split folder missing"),
        (["--epochs", "0"], "must be at least 1"),
        (["--recipe", "plus", "--set", "momentum=0.9"], "expected KEY=VALUE with KEY one of"),
        (["--recipe", "plus", "--set", "dropout=high"], "dropout takes a number"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(real_data, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--data" not in args:
        args += ["--data", str(real_data)]
    result = run_script("train/run.py", *args, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_bad_training_photo_is_a_one_line_error_before_keras_starts(real_data, tmp_path):
    dataset = tmp_path / "photos"
    for split in ("train", "validation", "test"):
        for label in ("cats", "dogs"):
            (dataset / split / label).mkdir(parents=True)
            for photo in sorted((real_data / "train" / label).iterdir())[:2]:
                (dataset / split / label / photo.name).symlink_to(photo)
    (dataset / "train" / "dogs" / "dog.bad.jpg").write_bytes(b"\xff\xd8 not a JPEG")
    # Any import of Keras or TensorFlow now fails: the error must come first.
    script = ("import sys; sys.modules['keras'] = sys.modules['tensorflow'] = None\n"
              "sys.argv[0] = 'train/run.py'\n"
              "from edgeconv.train.run import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "--data", str(dataset), "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {dataset / 'train/dogs/dog.bad.jpg'}: not an image; remove it from the "
        "train split (train/prepare_data.py filters bad files)")
    assert not (tmp_path / "run").exists()


def test_missing_default_data_prints_the_prepare_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EDGECONV_DATA"}
    result = subprocess.run([sys.executable, str(REPO / "train/run.py"), "--out", "run"],
                            cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "python train/prepare_data.py --download" in result.stderr


@pytest.mark.slow
def test_jax_backend_trains_the_same_model(real_data, tmp_path):
    out = tmp_path / "jax"
    result = run_script("train/run.py", "--data", real_data, "--recipe", "augmented",
                        "--limit", "16", "--epochs", "2", "--out", out,
                        env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == "jax" and metrics["params"] == 3_453_121
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 2


def test_help_lists_every_recipe():
    result = run_script("train/run.py", "--help")
    assert result.returncode == 0
    assert all(name in result.stdout for name in ("baseline:", "augmented:", "plus:"))


@pytest.mark.slow
def test_training_throughput_benchmark_runs_every_pipeline(real_data, tmp_path):
    result = run_script("benchmarks/train.py", "--data", real_data, "--steps", "1",
                        "--repeats", "1", "--json", tmp_path / "throughput.json")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "throughput.json").read_text())["rows"]
    assert [(row["pipeline"], row["precision"]) for row in rows] == [
        ("generator", "float32"), ("generator", "bfloat16"),
        ("edgeconv", "float32"), ("edgeconv", "bfloat16")]
    assert all(row["images_per_second"] > 0 for row in rows)
    for row in rows:  # each ratio is to the book's float32 generator, as printed
        ratio = row["images_per_second"] / rows[0]["images_per_second"]
        assert row["ratio"] == pytest.approx(ratio)
        assert f"| {row['pipeline']} | {row['precision']} | {row['images_per_second']:.1f} |" \
            in result.stdout and f"| {ratio:.2f}x |" in result.stdout


def cpuinfo(vendor: str, *flags: str) -> str:
    processor = f"vendor_id\t: {vendor}\nflags\t\t: fpu sse2 avx2 avx512f {' '.join(flags)}\n"
    return processor * 2


@pytest.mark.parametrize("vendor, flags, expected", [
    ("AuthenticAMD", ["avx512_bf16"], "bfloat16"),           # EPYC: 1.6-1.8x faster
    ("GenuineIntel", ["avx512_bf16", "avx_vnni"], "float32"),  # no AMX: 28% slower
    ("GenuineIntel", ["avx512_bf16", "amx_bf16", "amx_tile"], "bfloat16"),
    ("AuthenticAMD", [], "float32"),
    ("GenuineIntel", ["avx512_bf16_typo"], "float32"),       # whole flags, not substrings
])
def test_auto_precision_takes_bfloat16_only_where_it_trains_faster(vendor, flags, expected):
    from edgeconv.train.environment import cpu_precision

    assert cpu_precision(cpuinfo(vendor, *flags)) == expected


def test_schedule_minutes_follow_the_rows_of_their_sizes():
    from edgeconv.benchmarks.train_plus import schedule_minutes

    rows = [{"size": size, "precision": "float32", "plain": True, "images_per_second": rate}
            for size, rate in ((150, 20.0), (112, 40.0))]
    rows.append({**rows[0], "plain": False, "images_per_second": 1.0})  # not a schedule's
    rows.append({**rows[0], "precision": "bfloat16", "images_per_second": 2.0})  # nor this
    schedules = {s["schedule"]: s["minutes"] for s in schedule_minutes(rows, 2000, 120)}
    assert schedules == {"every epoch at 150": 120 * 2000 / 20 / 60,
                         "3/4 at 112, then 150": (90 * 2000 / 40 + 30 * 2000 / 20) / 60}


@pytest.mark.slow
def test_plus_throughput_benchmark_prints_rows_minutes_and_a_profile(real_data, tmp_path):
    result = run_script("benchmarks/train.py", "--recipe", "plus", "--data", real_data,
                        "--sizes", "64", "--steps", "1", "--repeats", "1", "--profile",
                        "--teachers", "models/plus.keras", "--set", "color=0.3",
                        "--json", tmp_path / "plus.json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "plus.json").read_text())
    # A system-malloc row only where the setting gives one (not under oneDNN's own pool).
    malloc = allocator(TF_CPU_ALLOCATOR_USE_BFC="false") == "malloc"
    assert ("no system-malloc row: TensorFlow runs oneDNN here" in result.stdout) != malloc
    assert [row["choice"] for row in report["rows"]] == [
        "float32 at 64", *["float32 at 64, system malloc"] * malloc,
        "float32 at 64, Keras's BatchNorm", "float32 at 64, no augmentation",
        "float32 at 64, distilled from 1 teacher", "float32 at 64, --set color=0.3"]
    assert [row["plain"] for row in report["rows"]] == [True] + [False] * (4 + malloc)
    assert report["rows"][-1]["settings"] == {"color": 0.3}
    for row in report["rows"]:  # a whole plus run: 120 epochs of the 2,000 training photos
        assert row["minutes_per_run"] == pytest.approx(120 * 2000 / row["images_per_second"] / 60)
        assert f"| {row['choice']} | {row['images_per_second']:.1f} |" in result.stdout
    layers = {(layer["layer"], layer["input"]) for layer in report["layers"]}
    assert {("SeparableConv2D", 75), ("FusedBatchNormalization", 75), ("Conv2D stem", 150),
            ("Dense", 0)} <= layers
    assert sum(layer["share"] for layer in report["layers"]) == pytest.approx(1.0)
    assert report["schedules"] == []  # no schedule is all at 64
    distilled = report["rows"][3 + malloc]
    assert distilled["teachers"] == 1 and distilled["minutes_per_run"] == pytest.approx(
        120 * 2000 / distilled["images_per_second"] / 60)


def test_plus_throughput_benchmark_refuses_a_bad_setting_in_one_line(real_data):
    result = run_script("benchmarks/train.py", "--recipe", "plus", "--data", real_data,
                        "--set", "color=2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --set color=2: the colour jitter's strength is 0 (off) or in (0, 1), e.g. 0.3"]


def allocator(**settings: str | None) -> str:
    """"pooled" or "malloc": the CPU allocator TensorFlow takes in a process that imports
    edgeconv's training with these environment variables (None: unset)."""
    probe = ("import tensorflow as tf, edgeconv.train.model; tf.ones(1)\n"
             "try:\n    tf.config.experimental.get_memory_info('CPU:0'); print('pooled')\n"
             "except ValueError:\n    print('malloc')")
    env = {key: value for key, value in os.environ.items() if key not in settings}
    env.update({key: value for key, value in settings.items() if value is not None})
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300)
    assert result.stdout.split()[-1:] in (["pooled"], ["malloc"]), result.stderr[-2000:]
    return result.stdout.split()[-1]


@pytest.mark.parametrize("setting, pooled", [(None, True), ("false", False)])
@pytest.mark.slow
def test_training_takes_tensorflows_pooling_cpu_allocator_unless_told_otherwise(
        setting, pooled):
    # The pool is what makes a plus step 1.5x faster on an AVX2 CPU (benchmarks/train.py's
    # "system malloc" row); it is chosen when the first tensor is made, even after
    # TensorFlow's import. oneDNN (on by default where the CPU has AVX512-VNNI) brings an
    # allocator that pools whatever the setting says, so it is off here: the setting's effect
    # is the same on every CPU.
    assert allocator(TF_CPU_ALLOCATOR_USE_BFC=setting, TF_ENABLE_ONEDNN_OPTS="0") == (
        "pooled" if pooled else "malloc")
    assert allocator(TF_CPU_ALLOCATOR_USE_BFC=setting, TF_ENABLE_ONEDNN_OPTS="1") == "pooled"
