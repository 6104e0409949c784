#!/usr/bin/env python3
"""Hostile input for runtime/classify: bad photos and mutated model files, each run in its own
process with a timeout, tabulated (case, tried, crashes, hangs, wrong exits, lost).

  python tests/reliability/hostile.py MODEL [MODEL ...] --photos DIR [--mutations 1000]
                                      [--report docs/reliability.md]

Photos: every case of `image_cases` in one folder beside good photos (each bad one must get a
line naming it and why, each good one a label, exit 1), then each alone (exit 1 with that line,
or 0 for a file that is a real image after all); names holding terminal escapes, and a 1 GiB
sparse .jpg. Models: MUTATIONS mutated copies of each model (truncation, byte flips, corrupted
or missing edgeconv metadata, a wrong input shape, the other format's suffix, garbage): exit 0
(still a valid model) or 2 with one `error:` line; then hostile model files (/dev/zero, a FIFO,
a folder, 600 MiB, metadata nested 100,000 deep, labels with escapes): exit 2, one line.
A crash (signal), a traceback, any other exit, no answer within the timeout, or a raw control
character in the output (a name's escape sequence reaching the terminal) is counted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from edgeconv.runtime.tables import markdown_table
from edgeconv.runtime.text import display

ROOT = Path(__file__).resolve().parents[2]

TIMEOUT = 60


# --- photos ----------------------------------------------------------------------------------

def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A valid PNG header claiming 30,000 x 30,000 pixels, with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data +
                zlib.crc32(kind + data).to_bytes(4, "big"))
    header = (30000).to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(b"\0" * 10000)) + chunk(b"IEND", b""))


def image_cases(good: Path) -> dict[str, Callable[[Path], None]]:
    """name -> function writing that case at a path; `good` is a real JPEG to start from."""
    from PIL import Image

    photo = good.read_bytes()
    rgb = Image.open(good).convert("RGB")

    def saved(image, fmt, **options):
        def write(path):
            image.save(path, fmt, **options)
        return write

    def data(content: bytes):
        return lambda path: path.write_bytes(content)

    def oriented(value: int):
        def write(path):
            exif = Image.Exif()
            exif[0x0112] = value
            rgb.save(path, "JPEG", exif=exif)
        return write

    def animated(path):
        frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
        frames[0].save(path, "GIF", save_all=True, append_images=frames[1:])

    def multipage(path):
        rgb.save(path, "TIFF", save_all=True, append_images=[rgb.rotate(90)])

    cases: dict[str, Callable[[Path], None]] = {
        "zero-byte.jpg": data(b""),
        "truncated-10.jpg": data(photo[: len(photo) // 10]),
        "truncated-50.jpg": data(photo[: len(photo) // 2]),
        "truncated-99.jpg": data(photo[: len(photo) * 99 // 100]),
        "png-named.jpg": saved(rgb, "PNG"),
        "html-named.jpg": data(b"<!doctype html><html><body>404 Not Found</body></html>"),
        "svg-named.jpg": data(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" '
                              b'height="10"><rect width="10" height="10"/></svg>'),
        "bomb.png": data(_bomb()),
        "sixteen-bit.png": saved(Image.new("I;16", (64, 48), 40000), "PNG"),
        "palette.png": saved(rgb.convert("P"), "PNG"),
        "cmyk.jpg": saved(rgb.convert("CMYK"), "JPEG"),
        "animated.gif": animated,
        "multipage.tif": multipage,
        "photo.webp": saved(rgb, "WEBP"),
        "phone.heic": data(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64),
        "broken-link.jpg": lambda path: path.symlink_to(path.parent / "does-not-exist.jpg"),
        "loop-a.jpg": lambda path: path.symlink_to(path.parent / "loop-b.jpg"),
        "loop-b.jpg": lambda path: path.symlink_to(path.parent / "loop-a.jpg"),
        "fifo.jpg": lambda path: os.mkfifo(path),
        "device.jpg": lambda path: path.symlink_to("/dev/zero"),
        "new\nline.jpg": data(photo),
        os.fsdecode(b"not-utf8-\xff\xfe.jpg"): data(photo),
    }
    for value in range(1, 9):
        cases[f"exif-orientation-{value}.jpg"] = oriented(value)
    return cases


GOOD_CASES = {"png-named.jpg", "sixteen-bit.png", "palette.png", "cmyk.jpg", "animated.gif",
              "multipage.tif", "photo.webp", "new\nline.jpg",
              os.fsdecode(b"not-utf8-\xff\xfe.jpg"), *(f"exif-orientation-{v}.jpg"
                                                       for v in range(1, 9))}


def classify(model: Path, *args: str | Path, stdin: bytes | None = None
             ) -> tuple[str, str, str]:
    """(outcome, stderr, stdout) of one classify process; outcome: 'exit N', 'signal NAME',
    'hang'."""
    try:
        result = subprocess.run([sys.executable, str(ROOT / "runtime" / "classify"), str(model),
                                 *map(str, args)], input=stdin, capture_output=True,
                                timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return "hang", "", ""
    stderr, stdout = (result.stderr.decode(errors="replace"),
                      result.stdout.decode(errors="replace"))
    if result.returncode < 0:
        return f"signal {signal.Signals(-result.returncode).name}", stderr, stdout
    return f"exit {result.returncode}", stderr, stdout


def photo_rows(model: Path, photos: Path, work: Path) -> list[list]:
    """Each case alone, then all of them in one folder with good photos, then stdin paths."""
    good = sorted(p for p in photos.rglob("*.jpg"))[:5]
    folder = work / "hostile"
    folder.mkdir()
    cases = image_cases(good[0])
    for name, write in cases.items():
        write(folder / name)
    counts = Counter()
    for name in cases:
        outcome, stderr, stdout = classify(model, folder / name)
        expected = "exit 0" if name in GOOD_CASES else "exit 1"
        counts[classify_outcome(outcome, stderr, expected, name, stdout)] += 1
    rows = [[f"photos, each alone ({len(cases) - len(GOOD_CASES)} bad, "
             f"{len(GOOD_CASES)} odd but good)", len(cases), *tally(counts)]]

    for photo in good:
        shutil.copy(photo, folder / photo.name)
    result = subprocess.run([sys.executable, str(ROOT / "runtime" / "classify"), str(model),
                             str(folder), "--json"], capture_output=True, timeout=TIMEOUT)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    labelled = {Path(line["path"]).name for line in lines if "label" in line}
    refused = {Path(line["path"]).name for line in lines if "error" in line}
    expected_good = {name for name in cases if name in GOOD_CASES} | {p.name for p in good}
    mixed = Counter({classify_outcome(f"exit {result.returncode}", result.stderr.decode(
        errors="replace"), "exit 1", "folder"): 1})
    lost = len(expected_good - labelled) + len(set(cases) - GOOD_CASES - refused)
    if lost:
        FAILURES.append(f"folder: not classified {sorted(expected_good - labelled)}, "
                        f"not reported {sorted(set(cases) - GOOD_CASES - refused)}")
    rows.append(["a folder of all of them and 5 good photos: each bad one reported, each good "
                 "one labelled", 1, *tally(mixed)[:3], lost])
    paths = b"\n".join([os.fsencode(folder / good[0].name), b"/no/such/photo.jpg",
                        os.fsencode(folder / "fifo.jpg")]) + b"\n"
    outcome, stderr, stdout = classify(model, "-", stdin=paths)
    piped = Counter({classify_outcome(outcome, stderr, "exit 1", "stdin", stdout): 1})
    rows.append(["paths on stdin that do not exist or are FIFOs", 1, *tally(piped)])
    return rows


# --- the other stages that read photos -----------------------------------------------------

def run_stage(script: str, *args: str | Path) -> tuple[str, str, str]:
    """(outcome, stdout, stderr) of one of the repo's scripts."""
    try:
        result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)],
                                capture_output=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "hang", "", ""
    code = result.returncode
    outcome = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    return outcome, result.stdout.decode(errors="replace"), result.stderr.decode(
        errors="replace")


def stage_rows(model_keras: Path | None, photos: Path, work: Path) -> list[list]:
    """prepare_data.py, the training loader and parity.py on folders holding the bad photos."""
    good = sorted(photos.rglob("*.jpg"))
    cases = image_cases(good[0])
    bad = [name for name in cases if name not in GOOD_CASES]
    rows = []

    raw = work / "raw"  # Kaggle-style names: the bad files take the first indices
    raw.mkdir()
    for index, name in enumerate(bad):
        cases[name](raw / f"cat.{index}.jpg")
        cases[name](raw / f"dog.{index}.jpg")
    for index, photo in enumerate(good[:20], start=len(bad)):
        shutil.copy(photo, raw / f"{'cat' if index % 2 else 'dog'}.{index}.jpg")
        shutil.copy(photo, raw / f"{'dog' if index % 2 else 'cat'}.{index}.jpg")
    outcome, out, err = run_stage("train/prepare_data.py", "--source", raw, "--out",
                                  work / "prepared", "--train", "4", "--validation", "2",
                                  "--test", "2")
    verdict = classify_outcome(outcome, err, "exit 0", "prepare_data")
    kept = len(list((work / "prepared").rglob("*.jpg"))) if outcome == "exit 0" else 0
    lost = 0 if kept == 16 else 1
    if lost:
        FAILURES.append(f"prepare_data kept {kept} of 16 good photos: {err[-300:]}")
    rows.append([f"train/prepare_data.py: {len(bad)} bad photos per class among good ones", 1,
                 *tally(Counter({verdict: 1}))[:3], lost])

    dataset = work / "dataset"
    for split in ("train", "validation", "test"):
        for label in ("cats", "dogs"):
            (dataset / split / label).mkdir(parents=True)
            for photo in good[:3]:
                shutil.copy(photo, dataset / split / label / photo.name)
    counts = Counter()
    for name in bad:
        target = dataset / "train" / "cats" / ("bad" + Path(name).suffix)
        cases[name](target)
        outcome, _, err = run_stage("train/run.py", "--data", dataset, "--out",
                                    work / "run", "--epochs", "1")  # the same folder each time
        verdict = classify_outcome(outcome, err, "exit 2", f"training loader: {name}")
        if verdict == "ok" and "remove it from the train split" not in err:
            verdict = "wrong exit"
            FAILURES.append(f"training loader: {name}: {err.strip()[-200:]}")
        counts[verdict] += 1
        target.unlink()
    lost = int((work / "run").exists())  # a refused start must leave no run behind
    if lost:
        FAILURES.append("training loader: a refused start left a run folder behind")
    rows.append(["train/run.py: one bad photo in the training split (each case)", len(bad),
                 *tally(counts)[:3], lost])

    if model_keras is not None:
        folder = work / "parity" / "cats"
        folder.mkdir(parents=True)
        for name in bad:
            cases[name](folder / name)
        for photo in good[:5]:
            shutil.copy(photo, folder / photo.name)
        artifact = next(model_keras.parent.glob(model_keras.stem + "_int8.tflite"))
        outcome, out, err = run_stage("export/parity.py", "--reference", model_keras,
                                      "--data", folder.parent, artifact)
        verdict = classify_outcome(outcome, err, "exit 0 or 1", "parity")
        skipped = err.count("skipped ")
        lost = 0 if "| 5 |" in out and skipped == len(bad) else 1
        if lost:
            FAILURES.append(f"parity: {skipped} skipped of {len(bad)}; {out[-300:]}")
        rows.append([f"export/parity.py: {len(bad)} bad photos beside 5 good ones", 1,
                     *tally(Counter({verdict: 1}))[:3], lost])
    return rows


# --- model files -----------------------------------------------------------------------------

def mutations(data: bytes, suffix: str, rng: random.Random) -> tuple[str, bytes, str]:
    """(kind, mutated bytes, suffix to save it with), drawn at random."""
    start = data.find(b'{"format": "edgeconv-model/1"')
    end = data.find(b"}", data.find(b'"created"', start)) + 1 if start >= 0 else -1
    kind = rng.choice(["truncated", "byte flips", "metadata bytes", "metadata shape",
                       "no metadata", "other suffix", "garbage", "empty"])
    mutated = bytearray(data)
    if kind == "truncated":
        del mutated[rng.randrange(len(data)):]
    elif kind == "byte flips":
        for _ in range(rng.choice([1, 4, 16, 64, 256])):
            mutated[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == "metadata bytes" and start >= 0:
        for _ in range(rng.choice([1, 4, 16])):
            mutated[rng.randrange(start, end)] = rng.randrange(256)
    elif kind == "metadata shape" and start >= 0:
        mutated = bytearray(bytes(mutated).replace(b"[1, 150, 150, 3]", rng.choice(
            [b"[1, 224, 224, 3]", b"[1, 150, 150, 1]", b"[1, 999, 150, 3]", b"[7, 150, 150, 3]",
             b"[1, 150, 150]   ", b'"none"          '])))
    elif kind == "no metadata":
        mutated = bytearray(bytes(mutated).replace(b"edgeconv", b"edgecxnv"))
    elif kind == "other suffix":
        suffix = ".onnx" if suffix == ".tflite" else ".tflite"
    elif kind == "garbage":
        mutated = bytearray(rng.randbytes(rng.randrange(1, 100_000)))
    elif kind == "empty":
        mutated = bytearray()
    return kind, bytes(mutated), suffix


def model_rows(model: Path, count: int, photo: Path, work: Path, seed: int = 0) -> list[list]:
    rng = random.Random(seed)
    data = model.read_bytes()
    counts: dict[str, Counter] = {}
    for index in range(count):
        kind, mutated, suffix = mutations(data, model.suffix, rng)
        path = work / f"mutant-{index}{suffix}"
        path.write_bytes(mutated)
        outcome, stderr, stdout = classify(path, photo)
        counts.setdefault(kind, Counter())[classify_outcome(outcome, stderr, "exit 0 or 2",
                                                            path.name, stdout)] += 1
        path.unlink()
    return [[f"{model.name}: {kind}", sum(tally_counts.values()), *tally(tally_counts)]
            for kind, tally_counts in sorted(counts.items())]


# --- hostile names, sizes and kinds of file ------------------------------------------------

ESCAPE_NAMES = ["erase-\x1b[2K\x1b[1A.jpg", "title-\x1b]0;owned\x07.jpg", "csi-\x9b31m.jpg",
                "bidi-\u202egpj.exe.jpg", "bell-\x07-tab-\t.jpg"]
BAD_ESCAPE_NAME = "not-an-image-\x1b]0;owned\x07.jpg"
HUGE_BYTES = 1024**3
RSS_LIMIT_MB = 300


def name_rows(model: Path, photo: Path, work: Path) -> list[list]:
    """Photos named with terminal escapes, C1 controls and bidi overrides, and one such
    non-image, in text and --json: every name escaped, every JSON line valid; a 1 GiB sparse
    .jpg, which must be refused before it is read (peak RSS under RSS_LIMIT_MB); a camera
    source so named, which must fail in one escaped line."""
    folder = work / "names"
    folder.mkdir()
    for name in ESCAPE_NAMES:
        shutil.copy(photo, folder / name)
    (folder / BAD_ESCAPE_NAME).write_bytes(b"<html>not a photo</html>")
    counts, lost = Counter(), 0
    outcome, stderr, stdout = classify(model, folder)
    counts[classify_outcome(outcome, stderr, "exit 1", "escaped names, text", stdout)] += 1
    missing = [name for name in [*ESCAPE_NAMES, BAD_ESCAPE_NAME] if display(name) not in stdout]
    outcome, stderr, stdout = classify(model, folder, "--json")
    counts[classify_outcome(outcome, stderr, "exit 1", "escaped names, --json", stdout)] += 1
    try:
        lines = [json.loads(line) for line in stdout.splitlines()]
    except ValueError:
        lines = []
    labelled = {Path(line["path"]).name for line in lines if "label" in line}
    refused = {Path(line["path"]).name for line in lines if "error" in line}
    if missing or labelled != set(ESCAPE_NAMES) or refused != {BAD_ESCAPE_NAME}:
        lost = 1
        FAILURES.append(f"escaped names: missing in text {missing!r}; --json labelled "
                        f"{sorted(labelled)!r}, refused {sorted(refused)!r}")
    rows = [["names with terminal escapes, C1 controls, bidi overrides (text and --json)", 2,
             *tally(counts)[:3], lost]]

    huge = work / "huge.jpg"
    with huge.open("wb") as file:
        file.truncate(HUGE_BYTES)  # sparse: no disk used
    outcome, stderr, stdout, rss_mb = classify_measured(model, huge)
    verdict = classify_outcome(outcome, stderr, "exit 1", "1 GiB .jpg", stdout)
    if verdict == "ok" and (rss_mb > RSS_LIMIT_MB or "MiB limit" not in stdout):
        verdict = "wrong exit"
        FAILURES.append(f"1 GiB .jpg: peak RSS {rss_mb:.0f} MB; {stdout.strip()[-200:]}")
    huge.unlink()
    rows.append([f"a 1 GiB sparse .jpg: refused before it is read (peak RSS {rss_mb:.0f} MB)",
                 1, *tally(Counter({verdict: 1}))])

    outcome, stderr, stdout = classify(model, "--camera", f"/no/camera-{ESCAPE_NAMES[1]}",
                                       "--max-frames", "1", "--no-display")
    verdict = classify_outcome(outcome, stderr, "exit 2", "camera source", stdout)
    rows.append(["a camera source named with terminal escapes", 1,
                 *tally(Counter({verdict: 1}))])
    return rows


def classify_measured(model: Path, *args: str | Path) -> tuple[str, str, str, float]:
    """classify's (outcome, stderr, stdout) and its peak RSS in MB, measured by a Python that
    has no other child."""
    wrapper = ("import json, resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True)\n"
               "print(json.dumps([r.returncode, r.stdout.decode(errors='replace'), "
               "r.stderr.decode(errors='replace'), "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))")
    try:
        result = subprocess.run([sys.executable, "-c", wrapper, sys.executable,
                                 str(ROOT / "runtime" / "classify"), str(model),
                                 *map(str, args)], capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return "hang", "", "", 0.0
    code, stdout, stderr, rss_mb = json.loads(result.stdout)
    outcome = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    return outcome, stderr, stdout, rss_mb


def _protobuf_field(number: int, value: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(value)) + value


def onnx_with_metadata(data: bytes, text: bytes) -> bytes:
    """The ONNX model `data` with `text` as its edgeconv metadata: one more metadata_props
    entry (field 14) at the end, which wins over the first as in protobuf's own parsers."""
    return data + _protobuf_field(14, _protobuf_field(1, b"edgeconv") + _protobuf_field(2, text))


def model_file_cases(models: list[Path]) -> dict[str, tuple[str, Callable[[Path], None]]]:
    """case -> (file name, function writing it at a path); each must exit 2 with one line."""
    onnx = next((m for m in models if m.suffix == ".onnx"), None)
    cases: dict[str, tuple[str, Callable[[Path], None]]] = {
        "/dev/zero as the model": ("zero.tflite", lambda path: path.symlink_to("/dev/zero")),
        "a FIFO as the model": ("fifo.tflite", lambda path: os.mkfifo(path)),
        "a folder as the model": ("folder.tflite", lambda path: path.mkdir()),
        "a 600 MiB sparse .tflite": ("big.tflite", lambda path: (path.touch(), os.truncate(
            path, 600 * 2**20))),
    }
    if onnx is not None:
        from edgeconv.runtime.metadata import read_metadata

        data, metadata = onnx.read_bytes(), read_metadata(onnx)
        deep = b"[" * 100_000 + b"]" * 100_000
        escaped = json.dumps({**metadata, "labels": ["\x1b]0;owned\x07cats", "dogs\x1b[2K"]})
        cases["ONNX metadata JSON nested 100,000 deep"] = (
            "deep.onnx", lambda path: path.write_bytes(onnx_with_metadata(data, deep)))
        cases["ONNX labels holding terminal escapes"] = (
            "labels.onnx", lambda path: path.write_bytes(onnx_with_metadata(
                data, escaped.encode())))
    return cases


def model_file_rows(models: list[Path], photo: Path, work: Path) -> list[list]:
    """Hostile model files (each exit 2, one line), and a good model with a hostile name."""
    folder = work / "model-files"
    folder.mkdir()
    rows = []
    for case, (name, write) in model_file_cases(models).items():
        write(folder / name)
        outcome, stderr, stdout = classify(folder / name, photo)
        rows.append([case, 1, *tally(Counter({classify_outcome(
            outcome, stderr, "exit 2", case, stdout): 1}))])
    named = folder / f"good-{ESCAPE_NAMES[1]}{models[0].suffix}"
    shutil.copy(models[0], named)
    counts = Counter()
    for args in ((photo,), (photo, "--json"), ("/no/such\x1b[2K.jpg",)):
        outcome, stderr, stdout = classify(named, *args)
        counts[classify_outcome(outcome, stderr, "exit 0 or 1", "escaped model name",
                                stdout)] += 1
    rows.append(["a good model named with terminal escapes (text, --json, an error)", 3,
                 *tally(counts)])
    return rows


# --- outcomes --------------------------------------------------------------------------------

FAILURES: list[str] = []


def raw_control(text: str) -> bool:
    """True when `text` holds a character a terminal would act on (other than line ends)."""
    return any(char != "\n" and display(char) != char for char in text)


def classify_outcome(outcome: str, stderr: str, expected: str, name: str,
                     stdout: str = "") -> str:
    """'ok', 'crash', 'hang' or 'wrong exit' for one run; failures are kept for the report.
    Output holding a raw control character (an escape sequence from a name) is a wrong exit."""
    if outcome == "hang":
        verdict = "hang"
    elif outcome.startswith("signal") or "Traceback" in stderr or \
            "Segmentation" in stderr or "core dumped" in stderr:
        verdict = "crash"
    elif outcome.removeprefix("exit ") not in expected.removeprefix("exit ").split(" or "):
        verdict = "wrong exit"
    elif outcome == "exit 2" and len(stderr.strip().splitlines()) != 1:
        verdict = "wrong exit"  # a refusal is one line
    elif raw_control(stdout + stderr):
        verdict = "wrong exit"
        outcome += ", raw control characters in the output"
    else:
        verdict = "ok"
    if verdict != "ok":
        FAILURES.append(f"{name!r}: {verdict} ({outcome}) {stderr.strip()[-300:]}")
    return verdict


def tally(counts: Counter) -> list[int]:
    return [counts["crash"], counts["hang"], counts["wrong exit"], 0]


HEADER = ["case", "tried", "crashes", "hangs", "wrong exits", "data lost"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/reliability/hostile.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", help=".tflite / .onnx files")
    parser.add_argument("--photos", type=Path, required=True, help="a folder of good photos")
    parser.add_argument("--mutations", type=int, default=1000, help="per model (default 1000)")
    parser.add_argument("--keras", type=Path, help="the Keras model beside MODEL_int8.tflite "
                        "(e.g. models/plus.keras): also run parity.py on the bad photos")
    parser.add_argument("--report", type=Path, help="write the table as Markdown here")
    args = parser.parse_args(argv)
    photo = sorted(args.photos.rglob("*.jpg"))[0]
    with tempfile.TemporaryDirectory(prefix="edgeconv-hostile-") as work:
        rows = photo_rows(args.models[0], args.photos, Path(work))
        rows += stage_rows(args.keras, args.photos, Path(work))
        rows += name_rows(args.models[0], photo, Path(work))
        rows += model_file_rows(args.models, photo, Path(work))
        for model in args.models:
            rows += model_rows(model, args.mutations, photo, Path(work))
    command = ("python tests/reliability/hostile.py " + " ".join(map(str, args.models))
               + f" --photos DIR --mutations {args.mutations}"
               + (f" --keras {args.keras}" if args.keras else ""))
    table = markdown_table(HEADER, rows)
    print(table)
    for failure in FAILURES:
        print(f"FAILED {failure}", file=sys.stderr)
    if args.report:
        names = ", ".join(f"`{display(name)}`" for name in image_cases(photo))
        args.report.write_text(
            f"# Reliability: hostile input\n\n`{command}` prints this table "
            f"({os.cpu_count()} cores). A run that ends on a signal or prints a traceback is a "
            "crash; no answer in 60 s is a hang; a bad photo must exit 1 with a line naming "
            "it, a model file exit 0 (still a valid model) or 2 with one `error:` line; a raw "
            "control character in any output (a name's escape sequence reaching the terminal) "
            "counts as a wrong exit.\n\n"
            f"{table}\n\nPhoto cases: {names}.\n")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
