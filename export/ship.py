#!/usr/bin/env python
"""Ship finished runs: their int8 files (and the plus run's model.keras) into models/, with cards.

  python export/ship.py RUN_DIR [RUN_DIR ...] [--models models/] [--data DIR/test]

Exports each run's int8 TFLite and ONNX files if missing, checks their parity against the
run's Keras model on its test split (a file failing its gate stops the shipping), copies
them to models/<recipe>_int8.tflite|onnx (and models/plus.keras for the plus recipe), and
writes models/models.json (every figure, full SHA-256 sums) and models/README.md (a card
per model, written from that JSON; classes, photo counts and data digest from the run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from edgeconv.common.files import atomic_path, write_json
from edgeconv.export import formats, parity
from edgeconv.export.artifacts import file_name
from edgeconv.export.cli import agreement_share
from edgeconv.export.source import ExportError, Source
from edgeconv.runtime.metadata import read_metadata
from edgeconv.runtime.tables import markdown_table, percent
from edgeconv.runtime.text import command_name
from edgeconv.train.recipes import RECIPES

INDEX = "models.json"
PETS_LIMITS = ("it knows two classes only: it calls every image a cat or a dog, a car or a "
               "face included; `runtime/classify --min-score S` answers `unsure` below a score "
               "S instead. Trained on 2,000 photos of Kaggle's Dogs vs. Cats: pets photographed "
               "by their owners, mostly one animal, centred; other views (a camera on a shelf "
               "at night, a crowd of animals) are out of what it has seen.")


NONE_LIMITS = ("its `none` answer was taught by {fit} and checked on {check} (monkeys and "
               "skies): what a door camera mostly sees (people, rooms, parcels, cars) it has "
               "never been shown, so expect some of those called a cat or a dog; "
               "`runtime/classify --eval` on your own photos of neither class prints the share "
               "answered `none`. Trained on 2,000 photos of Kaggle's Dogs vs. Cats: pets "
               "photographed by their owners, mostly one animal, centred.")


def limits(model: dict) -> str:
    """What the model cannot do, in the words of its own classes and data."""
    classes = model_classes(model)
    confidence = next((f["confidence"] for f in model["files"] if f.get("confidence")), None)
    if classes == ["cats", "dogs"] and confidence:
        none = confidence["none"]
        return NONE_LIMITS.format(fit=", ".join(none["fit_folders"]),
                                  check=", ".join(none["check_folders"]))
    if classes == ["cats", "dogs"]:
        return PETS_LIMITS
    return (f"it knows {len(classes)} classes only: it calls every image one of "
            f"{', '.join(classes)}, whatever the image shows; `runtime/classify --min-score S` "
            "answers `unsure` when the top score is under S instead (`--eval` on labelled "
            "photos prints what each S costs). Trained on "
            f"{model['train_images']:,} photos of `{Path(model['data']).name}`: photos unlike "
            "those (other light, backgrounds, distances, cameras) are out of what it has seen.")


def model_classes(model: dict) -> list[str]:
    """The classes a card speaks of: the run's own, else those its files carry."""
    return model.get("classes") or next(
        (f["labels"] for f in model["files"] if "labels" in f), [])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_and_check(run_dir: Path, photos: Path | None = None,
                     budget: float | None = None, limit: int | None = None) -> list[dict]:
    """int8 TFLite + int8 ONNX of a run (exported if missing, within `budget` if given) and
    their parity rows on `photos` (default: the run's test split; its first `limit` photos
    of each class when given); also written to RUN_DIR/parity.json."""
    source = Source(run_dir)
    photos = photos or source.data_split("test")
    if photos is None:
        raise ExportError(f"{run_dir}: the run records no test split; pass --data DIR/test")
    outcomes = formats.export_missing(source, [f.name for f in formats.INT8], budget=budget)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise ExportError(f"{run_dir}: {failed[0].format.name} export failed: "
                          f"{failed[0].error}")
    found = parity.check(source, [outcome.path for outcome in outcomes], photos, limit=limit)
    write_json(run_dir / "parity.json", {"reference": str(source.path), "data": str(photos),
                                         "images": len(found.files),
                                         "machine": parity.machine(), "artifacts": found.rows})
    return found.rows


def commands(run_dir: Path, models: Path, budget: float | None = None) -> list[str]:
    """The commands that made a run and shipped it, as a user would type them."""
    run = json.loads((run_dir / "run.json").read_text())
    confidence_file = run_dir / "confidence.json"
    confidence = json.loads(confidence_file.read_text()) if confidence_file.is_file() else {}
    trained = Path(confidence.get("from_run", run_dir))
    train = (f"python train/run.py --data DIR --recipe {run['recipe']} --seed {run['seed']} "
             f"--out {trained}")
    for key, value in (run.get("settings") or {}).items():
        train += f" --set {key}={json.dumps(value)}"
    if run["epochs"] != RECIPES[run["recipe"]].epochs:
        train += f" --epochs {run['epochs']}"
    if run.get("limit"):
        train += f" --limit {run['limit']}"
    if run.get("init"):  # learnt from the field (docs/field.md)
        train += f" --init {run['init']}"
    if run.get("field"):
        train += " --add " + " ".join(run["field"])
    ship = f"python export/ship.py {run_dir} --models {models}"
    made = [train, ship + (f" --budget {budget}" if budget else "")]
    if confidence:  # a temperature and none head added by train/confidence.py
        made.insert(1, f"python train/confidence.py {trained} --negatives "
                    f"{confidence['none']['negatives_path']} --out {run_dir}")
    prepared = Path(run["data"]) / "prepare.json"
    split = json.loads(prepared.read_text()) if prepared.is_file() else {}
    if "seed" in split:  # made from a folder of class folders by train/prepare_data.py
        made.insert(0, f"python train/prepare_data.py --source {split['source']} --out DIR "
                    + " ".join(f"--{name} {size}" for name, size in split["sizes"].items())
                    + f" --seed {split['seed']}")
    return made


def ship_runs(checked: dict[Path, list[dict]], models: Path, budget: float | None = None
              ) -> dict:
    """Copy and describe each run, given its parity rows (`export_and_check`); returns the
    index entries written."""
    entries = {}
    for run_dir, rows in checked.items():
        recipe = json.loads((run_dir / "run.json").read_text())["recipe"]
        entry = ship(run_dir, rows, models, keras=recipe == "plus",
                     commands=commands(run_dir, models, budget))
        entries[entry["recipe"]] = entry
    write_cards(models, entries)
    return entries


def ship(run_dir: Path, parity_rows: list[dict], models: Path, keras: bool,
         commands: list[str]) -> dict:
    """Copy the run's int8 files (and model.keras) into `models`; return its index entry."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recipe = metrics["recipe"]
    models.mkdir(parents=True, exist_ok=True)
    files = []
    names = {file_name(kind, "int8"): f"{recipe}_int8.{kind}" for kind in ("tflite", "onnx")}
    if keras:
        names["model.keras"] = f"{recipe}.keras"
    by_artifact = {row["artifact"]: row for row in parity_rows}
    for source_name, name in names.items():
        with atomic_path(models / name) as tmp:
            shutil.copyfile(run_dir / source_name, tmp)
        entry = {"file": name, "bytes": (models / name).stat().st_size,
                 "sha256": sha256(models / name)}
        if source_name in by_artifact:
            row = by_artifact[source_name]
            metadata = read_metadata(models / name)
            entry.update(
                test_accuracy=row["artifact_accuracy"], agreement=row["agreement"],
                max_abs_dp=row["max_abs_dp"], flips=len(row["flips"]), passed=row["passed"],
                source_sha256=metadata["source_model"]["sha256"],
                labels=metadata["labels"], input=metadata["input"],
                calibration=metadata["calibration"], recipe=metadata.get("int8_recipe"),
                confidence=metadata.get("confidence"),
                **({"none_agreement": row["none_agreement"]} if "none_agreement" in row
                   else {}), **({"ece": row["ece"]} if "ece" in row else {}))
        files.append(entry)
    return {
        "recipe": recipe, "run": run_dir.name, "seed": metrics["seed"],
        "epochs": metrics["epochs"], "data": metrics["data"],
        "data_sha256": metrics.get("data_sha256"), "classes": metrics["classes"],
        "counts": metrics.get("counts"), "ended_early": metrics.get("ended_early"),
        "train_images": metrics["train_images"], "params": metrics["params"],
        "macs_per_image": metrics["macs_per_image"],
        "keras_sha256": sha256(run_dir / "model.keras"),
        "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
        "train_seconds": metrics["train_seconds"], "precision": metrics["precision"],
        "machine": f"{metrics['cpu']} ({metrics['cores']} cores, {metrics.get('device', '')})",
        "backend": f"{metrics['backend']} {metrics.get('backend_version', '')}, "
                   f"Keras {metrics['keras_version']}",
        "commands": with_exports(commands, run_dir, files), "files": files,
    }


def card(model: dict) -> str:
    """One model's card, in Markdown."""
    int8 = [f for f in model["files"] if "test_accuracy" in f]
    calibration = int8[0]["calibration"] if int8 else None
    classes = model_classes(model)
    lines = [
        f"## {model['recipe']} (`{model['run']}`)", "",
        f"Recipe `{model['recipe']}`, seed {model['seed']}, {model['epochs']} epochs on "
        f"{model['train_images']:,} training photos (`{Path(model['data']).name}`); "
        f"{model['params']:,} parameters, {model['macs_per_image'] / 1e6:.0f} M "
        "multiply-accumulates per image.", "",
        f"- Classes ({len(classes)}): {', '.join(f'`{name}`' for name in classes)}.",
    ]
    if model.get("counts"):
        splits = model["counts"]
        lines.append("- Photos per class, " + " / ".join(splits) + ": " + "; ".join(
            f"{name} " + " / ".join(str(splits[split][i]) for split in splits)
            for i, name in enumerate(classes)) + ".")
    if model.get("data_sha256"):
        lines.append(f"- Data `{Path(model['data']).name}`, SHA-256 `{model['data_sha256']}` "
                     "(of the photos' paths and sums; train/prepare_data.py's `prepare.json` "
                     "holds the same when the run used every photo).")
    if model.get("ended_early"):
        early = model["ended_early"]
        lines.append(f"- Ended early at epoch {model['epochs']} of {early['planned_epochs']}, "
                     f"with the weights of epoch {early['weights_of_epoch']}.")
    lines += [
        f"- Keras model (float32): validation accuracy {percent(model['val_accuracy'])}, test "
        f"{percent(model['test_accuracy'])}; SHA-256 `{model['keras_sha256']}`.",
        f"- Trained in {model['train_seconds'] / 60:.0f} minutes ({model['precision']}) on "
        f"{model['machine']}, {model['backend']}.",
    ]
    lines += confidence_lines(int8[0].get("confidence") if int8 else None)
    if calibration:
        lines.append(f"- int8 calibration: {calibration['images']} images of "
                     f"`{calibration_name(calibration)}`, {calibration['selection']}.")
    lines += ["", "Test split, end to end from the JPEGs (`runtime/classify FILE "
              "DIR/test --eval` prints the accuracy; parity against the Keras model):", "",
              markdown_table(
                  ["file", "size MB", "test accuracy", "agreement with Keras", "flips",
                   "ECE", "none agreement", "max abs dp", "gate", "SHA-256"],
                  [[f"`{f['file']}`", f"{f['bytes'] / 1e6:.2f}",
                    percent(f.get("test_accuracy")), percent(f.get("agreement")),
                    f.get("flips", "-"), f"{f['ece']:.4f}" if "ece" in f else "-",
                    percent(f.get("none_agreement")),
                    f"{f['max_abs_dp']:.3f}" if "max_abs_dp" in f else "-",
                    {True: "pass", False: "FAIL"}.get(f.get("passed"), "-"),
                    f"`{f['sha256'][:16]}...`"] for f in model["files"]]),
              *recipe_lines(model["files"]),
              "", "Made by:", "", "```bash", *model["commands"], "```", "",
              f"Limits: {limits(model)}", ""]
    return "\n".join(lines)


def confidence_lines(confidence: dict | None) -> list[str]:
    """The card's lines on calibrated scores and the none answer (train/confidence.py)."""
    if not confidence:
        return []
    none = confidence["none"]
    return [
        f"- Calibrated scores: temperature {confidence['temperature']:.3f} fitted on the "
        f"validation photos; expected calibration error on the test photos "
        f"{confidence['test_ece_before']:.4f} before, {confidence['test_ece_after']:.4f} "
        "after (Keras; the int8 files' own in the table below).",
        f"- `none` answer ({none['method']}): {percent(none['check_negatives_none'])} of "
        f"{none['check_negatives']} negative photos it never saw (`{none['negatives']}` "
        f"folders {', '.join(none['check_folders'])}) answered `none`, and "
        f"{percent(none['test_none'])} of the test cats and dogs; test accuracy on the photos "
        f"answered with a class {percent(none['test_accuracy_answered'])}.",
    ]


def with_exports(commands: list[str], run_dir: Path, files: list[dict]) -> list[str]:
    """The commands, with an export line before the ship line for each int8 file whose
    recipe ship.py alone would not choose (another calibration method, no budget)."""
    exports = []
    for file in files:
        recipe = file.get("recipe") or {}
        if recipe.get("method", "minmax") != "minmax" and not recipe.get("budget"):
            script = "to_onnx" if file["file"].endswith(".onnx") else "to_tflite"
            exports.append(f"python export/{script}.py {run_dir} --quantize int8 "
                           f"--calibration-method {recipe['method']}")
    return [*commands[:-1], *exports, commands[-1]]


def recipe_lines(files: list[dict]) -> list[str]:
    """One line per int8 file made with a recipe: how it was quantized, and its budget."""
    lines = []
    for file in files:
        recipe = file.get("recipe")
        if not recipe:
            continue
        floats = len(recipe["float_layers"])
        text = (f"- `{file['file']}`: {recipe['calibration_images']} calibration images, "
                f"{recipe['method']}, " + (f"{floats} layers kept in float" if floats
                                           else "every layer int8"))
        if recipe.get("budget"):
            met = "met" if recipe["agreement"] >= recipe["budget"] else "not met"
            text += (f"; budget {percent(recipe['budget'])} agreement on "
                     f"`{recipe['budget_photos']}`: {percent(recipe['agreement'])} ({met})")
        lines.append(text + ".")
    return ["", *lines] if lines else []


def calibration_name(calibration: dict) -> str:
    """"cats_and_dogs_small/train": the set's name, also for cards written before names."""
    return calibration.get("name") or "/".join(Path(calibration["folder"]).parts[-2:])


def write_cards(models: Path, entries: dict[str, dict]) -> None:
    """models.json (merged with the entries already there) and README.md from it."""
    index_file = models / INDEX
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    index.update(entries)
    write_json(index_file, index)
    text = ["# Shipped models", "",
            "Trained and exported by edgeconv's own commands; each card names the model's "
            "classes and the data it learnt them from. Full SHA-256 sums and every figure "
            "below are in "
            f"[`{INDEX}`]({INDEX}). Each card ends with the commands that made its files; "
            "`export/ship.py` writes this page from that JSON.", "",
            *(card(model) for model in index.values())]
    with atomic_path(models / "README.md") as tmp:
        tmp.write_text("\n".join(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("export/ship.py"), description=__doc__.split(
        "\n\n")[0].strip(), epilog=f"Example: {command_name('python export/ship.py')} "
        "results/plus-seed1 "
        "results/augmented-seed0 --models models")
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="finished train/run.py runs")
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="folder of shipped models (default: %(default)s)")
    parser.add_argument("--data", type=Path, help="class folders to check parity on "
                        "(default: each run's test split)")
    parser.add_argument("--budget", type=agreement_share, metavar="AGREEMENT",
                        help="export missing int8 files within this agreement with Keras on "
                        "the run's validation split (export/to_tflite.py --budget)")
    parser.add_argument("--ship-failed", action="store_true", help="ship files that fail "
                        "their parity gate too (their cards say FAIL)")
    args = parser.parse_args(argv)
    try:
        for run_dir in args.run_dirs:
            if not (run_dir / "metrics.json").exists():
                raise ExportError(f"{run_dir}: not a finished run (no metrics.json)")
        checked = {run_dir: export_and_check(run_dir, args.data, args.budget)
                   for run_dir in args.run_dirs}
        failed = [f"{run_dir / row['artifact']} ({'; '.join(row['failures'])}"
                  f"{'; ' + row['cause'] if row.get('cause') else ''})"
                  for run_dir, rows in checked.items() for row in rows if not row["passed"]]
        if failed and not args.ship_failed:
            print(f"error: {', '.join(failed)}: fails its parity gate against the Keras model; "
                  "nothing shipped (--ship-failed ships it anyway)", file=sys.stderr)
            return 1
        entries = ship_runs(checked, args.models, args.budget)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for entry in entries.values():
        for file in entry["files"]:
            print(f"{args.models / file['file']}  {file['bytes'] / 1e6:.2f} MB  "
                  f"test {percent(file.get('test_accuracy'))}  {file['sha256'][:16]}")
    print(f"wrote {args.models / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
