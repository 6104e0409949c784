#!/usr/bin/env python
"""Train a convnet on a folder-of-classes dataset.

  python train/run.py --data DIR --recipe {baseline,augmented,plus} --out RUN_DIR [--resume]

RUN_DIR receives model.keras (float32, inputs 0..255), history.json, metrics.json and
curves.png. A checkpoint is written after every epoch: --resume continues a run that was
interrupted (Ctrl-C, SIGTERM, even SIGKILL) from its last completed epoch, and with a lower
--epochs ends it early, with the weights of its best epoch. The first steps time the run.

--add FIELD.tar... adds frames labelled on a device (serve's /api/field.tar) to the training
split, a quarter of them held out as a field split; --init MODEL starts from a trained model's
weights (models/plus.keras, a run's model.keras). The run then scores the new model, and the
--init one, on the test split and the field split (docs/field.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from edgeconv.runtime.text import command_name
from edgeconv.train.dataset import DEFAULT_DATA, DataError
from edgeconv.train.distribute import DeviceError, parse_devices
from edgeconv.train.recipes import RECIPES, parse_settings, teacher_files, with_settings
from edgeconv.train.session import Options, train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=command_name("train/run.py"),
        description="Train a convnet (the seed's Conv 32-64-128-128 + Dense 512, or the plus "
        "recipe's residual separable one) on DIR/{train,validation,test}/<class>/<images> and "
        "write model, metrics and curves to RUN_DIR.",
        epilog=f"Example: {command_name('python train/run.py')} "
        "--data data/photos --recipe augmented "
        "--out runs/photos (train/prepare_data.py --source PHOTOS --out data/photos makes "
        "DIR from a folder of class folders)",
    )
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="dataset folder: DIR/{train,validation,test}/<class>/ (default: "
                        f"$EDGECONV_DATA, else {DEFAULT_DATA} when it exists)")
    parser.add_argument("--recipe", choices=list(RECIPES),
                        help="; ".join(f"{name}: {recipe.summary}".replace("%", "%%")
                                       for name, recipe in RECIPES.items())
                        + " (default: baseline; with --resume: the run's own)")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR",
                        help="run folder to write")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="settings", help="change one recipe setting, e.g. --set "
                        "label_smoothing=0 --set augment=null (values are JSON; for ablations)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epoch count; "
                        "lower with --resume to end a run early, with the weights of its best "
                        "epoch by validation accuracy")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    parser.add_argument("--seed", type=int, help="random seed (default: 0)")
    parser.add_argument("--limit", type=int, help="at most N images per class per split "
                        "(quick runs)")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="training arithmetic; auto picks bfloat16 where the hardware runs "
                        "it natively (AVX512-BF16/AMX CPUs, GPUs), else float32. The saved "
                        "model is float32 either way.")
    parser.add_argument("--devices", default="all", metavar="all|N",
                        help="train data-parallel on N devices, each batch split among them "
                        "(the global batch stays the recipe's or --batch-size). all (default): "
                        "every visible GPU/TPU, or the CPU alone when there is none; N on a "
                        "machine without accelerators splits the CPU into N logical devices "
                        "(to check the multi-device path; no faster)")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="train one model in N processes together (KERAS_BACKEND=jax; one "
                        "a host, or several on one), each started with its --process-id, the "
                        "same --coordinator and its own --out; each uses --devices of its own")
    parser.add_argument("--process-id", type=int, default=0, metavar="I",
                        help="this process's index, 0 to N-1 (0 hosts the coordinator)")
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="where process 0 listens for the others, e.g. 10.0.0.1:1234")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last completed epoch, with "
                        "the data, recipe, settings, seed and epochs it was started with "
                        "(--epochs may lower the epochs)")
    field = parser.add_argument_group("learn from the field (docs/field.md)")
    field.add_argument("--add", nargs="+", type=Path, default=[], metavar="FIELD.tar",
                       help="frames labelled on a device (serve's /api/field.tar, or the tar "
                       "unpacked): three in four join the training split, one in four is held "
                       "out as a field split; validation and test stay the original photos")
    field.add_argument("--init", type=Path, metavar="MODEL.keras",
                       help="start from this model's weights (e.g. models/plus.keras with "
                       "--recipe plus) instead of random ones; its none head is left out")
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2],
                        help="Keras output: 1 progress bar, 2 a line per epoch "
                        "(default: 1 on a terminal, else 2)")
    args = parser.parse_args(argv)
    try:  # checked here for a one-line usage error; a resumed run applies its own
        args.settings = parse_settings(args.settings)
        with_settings(RECIPES[args.recipe or "baseline"], args.settings)
        if args.settings.get("teachers"):  # recorded absolute: a resume may start elsewhere
            args.settings["teachers"] = teacher_files(args.settings["teachers"])
    except ValueError as error:
        parser.error(str(error))
    try:
        args.devices = parse_devices(args.devices)
    except ValueError as error:
        parser.error(str(error))
    if args.processes > 1 and not args.coordinator:
        parser.error("--processes needs --coordinator HOST:PORT")
    if not 0 <= args.process_id < args.processes:
        parser.error(f"--process-id must be 0 to {args.processes - 1}")
    if args.init is not None and not args.init.is_file():
        parser.error(f"--init {args.init}: no such model file")
    if args.resume and (args.add or args.init):
        parser.error("--resume continues the run with its own --add and --init; leave them out")
    for name in ("epochs", "batch_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (systemd, CI timeouts) stops like Ctrl-C: the last whole epoch stays saved.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return train(Options(**vars(args)))
    except (DataError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full or failing disk: the last whole epoch stays saved
        print(f"error: {error.filename or args.out}: {error.strerror or error}; the last "
              f"whole epoch is saved: continue with: python train/run.py --out {args.out} "
              "--resume", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
