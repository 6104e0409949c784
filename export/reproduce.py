#!/usr/bin/env python
"""Reproduce the seed's two numbers (about 72% plain, about 82% with augmentation + dropout)
and edgeconv's plus recipe, and publish them with what survives quantization.

  python export/reproduce.py --data DIR --out results/ [--seeds 0,1,2] [--docs docs/results.md]
                             [--models models/]

Trains each recipe (`--recipes`, default all) for each seed (each run resumable, finished runs
skipped), exports the run of each augmented recipe with the best validation accuracy to
full-int8 TFLite and ONNX, runs the parity check on the test split, and writes
docs/results.md with its figures and the JSON of numbers behind them. --models also copies
those runs' int8 files (and the plus run's model.keras) into the folder of shipped models and
writes their cards. Interrupted, it picks up where it stopped. --page-only rewrites
docs/results.md from the results.json beside it and docs/results_notes.md, nothing trained:
for a change to the hand-written notes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from edgeconv.common.files import atomic_path, write_json
from edgeconv.export import ship
from edgeconv.export.source import ExportError
from edgeconv.runtime.tables import markdown_table, percent
from edgeconv.runtime.text import command_name
from edgeconv.train import session
from edgeconv.train.dataset import DataError, resolve_data
from edgeconv.train.plots import draw_curves, pyplot, save_figure
from edgeconv.train.recipes import RECIPES


def train_all(data: Path, out: Path, recipes: list[str], seeds: list[int], options: dict,
              train: bool = True) -> dict[str, list]:
    """recipe -> [metrics of each seed's finished run]; train=False only collects them."""
    finished: dict[str, list] = {}
    for recipe in recipes:
        for seed in seeds:
            run_dir = out / f"{recipe}-seed{seed}"
            done = (run_dir / "metrics.json").exists()
            if not done and not train:
                print(f"-- {recipe}, seed {seed}: not finished, left out", flush=True)
                continue
            if not done:
                print(f"== {recipe}, seed {seed} -> {run_dir}", flush=True)
                code = session.train(session.Options(out=run_dir, data=data, recipe=recipe,
                                                     seed=seed, resume=True, **options))
                if code != 0:
                    raise SystemExit(code)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            finished.setdefault(recipe, []).append({**metrics, "run_dir": str(run_dir)})
    return finished


def spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "n": len(values), "values": values}


# What write_markdown reads from each recipe's row: an earlier results.json must have them.
ROW_KEYS = ("epochs", "val_accuracy", "test_accuracy", "train_minutes", "images_per_second",
            "precision", "backend", "hardware", "keras")


def summarize(finished: dict[str, list]) -> dict:
    summary = {}
    for recipe, runs in finished.items():
        summary[recipe] = {
            "seeds": [run["seed"] for run in runs],
            "epochs": runs[0]["epochs"],
            "val_accuracy": spread([run["val_accuracy"] for run in runs]),
            "test_accuracy": spread([run["test_accuracy"] for run in runs]),
            "train_minutes": spread([run["train_seconds"] / 60 for run in runs]),
            "images_per_second": spread([run["images_per_second"] for run in runs]),
            "precision": runs[0]["precision"],
            "backend": f"{runs[0]['backend']} {runs[0].get('backend_version', '')}",
            "hardware": f"{runs[0]['cpu']} ({runs[0]['cores']} cores, {runs[0]['device']})",
            "keras": runs[0]["keras_version"],
        }
    return summary


def first_curves(runs: list[dict]) -> dict:
    """The first seed's per-epoch curves, kept in results.json so a later report can draw them."""
    history = json.loads((Path(runs[0]["run_dir"]) / "history.json").read_text())
    keys = ("accuracy", "loss", "val_accuracy", "val_loss", "val_epochs")
    return {"seed": runs[0]["seed"], "history": {k: history[k] for k in keys if k in history}}


def curves_figure(curves: dict[str, dict], path: Path) -> None:
    """Accuracy and loss curves of the first seed of each recipe, side by side."""
    figure, axes = pyplot().subplots(2, len(curves), figsize=(5.5 * len(curves), 7),
                                     squeeze=False)
    for column, (recipe, curve) in enumerate(curves.items()):
        draw_curves(axes[:, column], curve["history"], f"{recipe} (seed {curve['seed']})")
    figure.tight_layout()
    save_figure(figure, path)


def keep_previous(report: dict, previous: dict) -> list[str]:
    """Add to report the recipes of an earlier results.json that this run did not report, so
    that reproducing one recipe rewrites its own rows and keeps the others; returns those kept."""
    kept = [recipe for recipe in previous.get("recipes", {}) if recipe not in report["recipes"]]
    for part in ("recipes", "exported", "recipe_definitions", "curves"):
        both = {**previous.get(part, {}), **report[part]}
        report[part] = {recipe: both[recipe] for recipe in [*RECIPES, *kept] if recipe in both}
    return kept


def earlier_report(path: Path) -> dict:
    """The results.json an earlier report wrote, or {} when there is none."""
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        report = None
    rows = report.get("recipes", {}) if isinstance(report, dict) else None
    if not isinstance(rows, dict) or not all(
            isinstance(row, dict) and all(key in row for key in ROW_KEYS)
            for row in rows.values()):
        raise ExportError(f"{path} is not a results.json that export/reproduce.py wrote; move "
                          "it away to start the page afresh")
    return report


def spread_text(stats: dict, spec: str) -> str:
    """'mean (min-max)', or the one value."""
    if stats["n"] == 1:
        return format(stats["mean"], spec)
    return (f"{format(stats['mean'], spec)} ({format(stats['min'], spec)}-"
            f"{format(stats['max'], spec)})")


def by_recipe(summary: dict, sentence) -> list[str]:
    """One sentence when every recipe gives the same one; else one line per recipe."""
    sentences = {recipe: sentence(stats) for recipe, stats in summary.items()}
    if len(set(sentences.values())) == 1:
        return [next(iter(sentences.values()))]
    return [f"- {recipe}: {text}" for recipe, text in sentences.items()]


def parity_table(rows: list[dict]) -> str:
    return markdown_table(
        ["artifact", "Keras accuracy", "artifact accuracy", "label agreement", "max abs dp",
         "gate"],
        [[row["artifact"], percent(row["reference_accuracy"]), percent(row["artifact_accuracy"]),
          percent(row["agreement"]), f"{row['max_abs_dp']:.3f}",
          "pass" if row["passed"] else "FAIL"] for row in rows])


def write_markdown(path: Path, summary: dict, exported: dict[str, dict], figure: Path,
                   drawn: list[str]) -> None:
    def pct(stats):
        if stats["n"] == 1:
            return f"{100 * stats['mean']:.1f}% (1 seed)"
        return (f"{100 * stats['mean']:.1f}% ({100 * stats['min']:.1f}-"
                f"{100 * stats['max']:.1f}, {stats['n']} seeds)")

    table = markdown_table(
        ["recipe", "epochs", "validation accuracy", "test accuracy", "train minutes",
         "images/s", "precision"],
        [[recipe, s["epochs"], pct(s["val_accuracy"]), pct(s["test_accuracy"]),
          spread_text(s["train_minutes"], ".1f"), spread_text(s["images_per_second"], ".0f"),
          s["precision"]] for recipe, s in summary.items()])
    lines = ["# Results: convnets trained from scratch on 2,000 cats and dogs", ""]
    lines += by_recipe(summary, lambda s: f"Reproduce with `{s['command']}` (each run resumes; "
                       "finished runs are kept)." if "command" in s else
                       "Its command is not recorded (reported before results.json kept it).")
    lines += ["", table, ""]
    machines = by_recipe(summary, lambda s: f"Backend {s['backend']}, Keras {s['keras']}, on "
                         f"{s['hardware']}.")
    reading = ("Accuracy is the final epoch's model (no early stopping); test is read once per "
               "finished run. Train minutes and images/s: mean (min-max over runs); images/s "
               "counts training images over the whole fit, validation included.")
    if len(machines) == 1:
        lines += [f"{machines[0]} {reading}", ""]
    else:
        lines += [*machines, "", reading, ""]
    lines += [f"![training curves]({figure.name})", ""]
    missing = [recipe for recipe in summary if recipe not in drawn]
    if missing:
        lines += [f"No curves are kept for {', '.join(missing)}: reproducing "
                  f"{'it' if len(missing) == 1 else 'them'} draws them.", ""]
    for recipe, export in exported.items():
        lines += [f"## What survives int8 quantization: {recipe} ({export['run']})", "",
                  "End to end from the test JPEGs: Keras through the training pipeline, each "
                  "artifact through `runtime/` as a device runs it.", "",
                  parity_table(export["parity"]), ""]
    notes = path.with_name("results_notes.md")  # hand-written findings, kept across reruns
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=command_name("export/reproduce.py"), description=__doc__.split(
        "\n\n")[0].strip())
    parser.add_argument("--data", type=Path, help="dataset folder (default: as train/run.py)")
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help="folder for the runs (default: %(default)s)")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help="comma-separated recipes to train and report (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (default: 0,1,2)")
    parser.add_argument("--docs", type=Path, default=Path("docs/results.md"),
                        help="Markdown to write; figures and JSON go beside it")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs (quick "
                        "checks)")
    parser.add_argument("--limit", type=int, help="at most N images per class per split "
                        "(quick checks)")
    parser.add_argument("--models", type=Path, help="also ship the exported runs' int8 files "
                        "(and the plus run's model.keras) into this folder, with their cards")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: report the runs already finished")
    parser.add_argument("--page-only", action="store_true",
                        help="train, export and read no run: rewrite the page from the "
                        "results.json beside it and results_notes.md (after editing the notes)")
    args = parser.parse_args(argv)
    recipes = args.recipes.split(",")
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error("--seeds takes integers, e.g. 0,1,2")
    recipe_option = [] if args.recipes == parser.get_default("recipes") else [
        "--recipes", args.recipes]
    try:
        if args.page_only:
            return rewrite_page(args.docs)
        return reproduce(args, recipes, seeds, recipe_option)
    except (DataError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def rewrite_page(docs: Path) -> int:
    """The page written again from results.json and the notes: the curves redrawn from those
    results.json keeps, else the figure an earlier report drew is kept as it is."""
    numbers_path = docs.with_name("results.json")
    report = earlier_report(numbers_path)
    if not report.get("recipes"):
        raise ExportError(f"{numbers_path}: holds no results to write the page from; run "
                          "export/reproduce.py without --page-only first")
    figure = docs.with_name("results_curves.png")
    curves = report.get("curves") or {}
    if curves:
        curves_figure(curves, figure)
        drawn = list(curves)
    elif figure.is_file():
        drawn = list(report["recipes"])  # drawn by the report that wrote these rows
    else:
        raise ExportError(f"{numbers_path}: keeps no curves and {figure} is missing; "
                          "reproducing the recipes draws them")
    write_markdown(docs, report["recipes"], report.get("exported", {}), figure, drawn)
    print(f"wrote {docs}")
    return 0


def reproduce(args: argparse.Namespace, recipes: list[str], seeds: list[int],
              recipe_option: list[str]) -> int:
    """Train what is missing, export and check the best runs, ship them if asked, write docs."""
    data = resolve_data(args.data)
    numbers_path = args.docs.with_name("results.json")
    previous = earlier_report(numbers_path)  # read first: a bad file fails before any training
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    options = {"precision": args.precision, "epochs": args.epochs, "limit": args.limit}
    flags = [f"--{key} {value}" for key, value in options.items()
             if value is not None and value != "auto"]
    finished = train_all(data, args.out, recipes, seeds, options, train=not args.no_train)
    if not finished:
        print(f"error: no finished runs in {args.out}", file=sys.stderr)
        return 2
    checked = {}
    for recipe, runs in finished.items():
        if RECIPES[recipe].augment is None:
            continue  # the overfitting baseline is a reference point, not a model to deploy
        best = Path(max(runs, key=lambda run: run["val_accuracy"])["run_dir"])
        checked[best] = ship.export_and_check(best, data / "test", limit=args.limit)
    if args.models:
        ship.ship_runs(checked, args.models)
    exported = {json.loads((run / "run.json").read_text())["recipe"]: {
        "run": run.name, "parity": [{k: v for k, v in row.items() if k != "flips"}
                                    for row in rows]} for run, rows in checked.items()}
    command = " ".join(["python export/reproduce.py --data DIR", *recipe_option,
                        "--seeds", args.seeds, *flags])
    summary = summarize(finished)
    for stats in summary.values():
        stats["command"] = command
    report = {"recipes": summary, "exported": exported,
              "recipe_definitions": {name: RECIPES[name].as_dict() for name in finished},
              "curves": {recipe: first_curves(runs) for recipe, runs in finished.items()}}
    kept = keep_previous(report, previous)
    if kept:
        print(f"kept {', '.join(kept)} from {numbers_path} (not reported this time)")
    figure = args.docs.with_name("results_curves.png")
    curves_figure(report["curves"], figure)
    write_json(numbers_path, report)
    write_markdown(args.docs, report["recipes"], report["exported"], figure,
                   list(report["curves"]))
    print(f"wrote {args.docs}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
