"""The options classify and serve share, declared once, and the settings they resolve to.

Both commands take a model, how to run it (--engine, --threads, --min-score, --full-decode),
a device profile, a camera (--camera, --width, --height, --every) and where to keep the frames
the model was unsure of (--capture DIR and its bounds, runtime/capture.py). resolve() fills what the
command line left unset from the profile, then the defaults, and checks the ranges: the
commands read one Settings object and never the profile.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from edgeconv.runtime.capture import CaptureRules
from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.engines import ENGINES
from edgeconv.runtime.kinds import by_suffix
from edgeconv.runtime.profiles import ProfileError, load_profile


class SettingsError(ValueError):
    """A flag out of range or a bad profile: one line for the user."""


@dataclass(frozen=True)
class Settings:
    model: Path
    engine: str
    threads: int | None  # None: the engine's default, all cores
    min_score: float | None  # None: the model's own
    full_decode: bool
    profile: str | None
    camera: str | None  # None: no camera; else a source ("0", /dev/video0, a URL, picamera)
    width: int | None
    height: int | None
    every: int
    capture: CaptureRules | None = None  # None: no frame is kept

    def load(self, path: Path) -> Classifier:
        """The model at `path` (this model, or its replacement in a hot swap), as set."""
        return Classifier(path, self.engine, self.threads, self.min_score,
                          fast_jpeg=not self.full_decode)


def add_shared_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The model argument and the shared flags; returns the camera group for more flags."""
    parser.add_argument("model", type=Path, help="a .tflite or .onnx file exported by edgeconv")
    parser.add_argument("--min-score", type=float, metavar="S",
                        help="answer 'unsure' when the top class's calibrated probability "
                        "(the model's temperature applied, when it has one) is under S (0-1; "
                        "default: the model's own, else 0: always a class). The top score of "
                        "k classes is never under 1/k (0.5 for two), so only S above that "
                        "cuts; classify --eval on labelled photos shows what each S costs. A "
                        "model with a none head answers 'none' for photos of none of its classes")
    parser.add_argument("--full-decode", action="store_true",
                        help="decode large JPEGs at full size (default: at the smallest DCT "
                        "scale still twice the model's input, several times faster)")
    parser.add_argument("--engine", choices=("auto", *ENGINES),
                        help="inference engine (default: the profile's, else chosen from the "
                        "model file)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads in all (default: the profile's, else all cores), split "
                        "into interpreters by what a photo costs to decode and infer")
    parser.add_argument("--profile", metavar="NAME",
                        help="device profile from devices/ (e.g. raspberry-pi-5, auto, or a "
                        "profile.json): its engine, threads, camera, resolution and --every; "
                        "flags override it")
    camera = parser.add_argument_group("camera")
    camera.add_argument("--camera", nargs="?", const="", metavar="SOURCE",
                        help="classify a camera or stream: a device index, /dev/videoN, a "
                        "video file, a URL or picamera (default: the profile's, else 0)")
    camera.add_argument("--width", type=int, help="capture width (default: the profile's)")
    camera.add_argument("--height", type=int, help="capture height (default: the profile's)")
    camera.add_argument("--every", type=int, metavar="N",
                        help="classify every Nth frame (default: the profile's, else 1)")
    capture = parser.add_argument_group(
        "capture", "keep the camera's frames the model is unsure of, to label on the device "
        "(serve's /label page) and learn from (docs/field.md); off by default")
    defaults = CaptureRules(Path("."))
    capture.add_argument("--capture", type=Path, metavar="DIR",
                         help="keep frames answered none or unsure, or scored under "
                         "--capture-below, in DIR: a JPEG and a JSON sidecar each")
    capture.add_argument("--capture-below", type=float, metavar="S", default=defaults.below,
                         help="keep frames whose calibrated score is under S (default: "
                         "%(default)s)")
    capture.add_argument("--capture-per-minute", type=int, metavar="N",
                         default=defaults.per_minute, help="keep at most N frames a minute "
                         "(default: %(default)s)")
    capture.add_argument("--capture-keep", type=int, metavar="M", default=defaults.keep,
                         help="keep at most M frames in DIR; to make room the oldest exported, "
                         "then the oldest unlabelled go first, labelled ones only once "
                         "exported (default: %(default)s)")
    capture.add_argument("--capture-mb", type=float, metavar="MB",
                         default=defaults.max_bytes / 2**20,
                         help="and at most MB megabytes (default: %(default)g)")
    return camera


def resolve(args: argparse.Namespace, threads: int | None = None) -> Settings:
    """The shared flags of `args`, with what they left unset taken from the profile, then the
    defaults; `threads` is the command's own default (None: the engine's). Raises
    SettingsError for a bad profile or a value out of range."""
    try:
        profile = load_profile(args.profile) if args.profile else {}
    except ProfileError as error:
        raise SettingsError(str(error)) from None
    kind = by_suffix(args.model)
    if kind is not None and profile.get("engine") not in kind.engines:
        profile.pop("engine", None)  # a profile names its TFLite engine
    defaults = {"engine": "auto", "threads": threads, "width": None, "height": None, "every": 1}
    # A profile's 0 (threads) means the default, as an absent key does.
    chosen = {key: value if (value := getattr(args, key)) is not None
              else profile.get(key) or default for key, default in defaults.items()}
    camera = args.camera
    if camera == "":
        camera = str(profile.get("camera", "0"))
    if chosen["every"] < 1 or (chosen["threads"] is not None and chosen["threads"] < 1):
        raise SettingsError("--every and --threads must be at least 1")
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise SettingsError("--min-score must be between 0 and 1")
    for key in ("width", "height"):
        if chosen[key] is not None and chosen[key] < 1:
            raise SettingsError(f"--{key} must be at least 1")
    return Settings(model=args.model, min_score=args.min_score, full_decode=args.full_decode,
                    profile=args.profile, camera=camera, capture=capture_rules(args), **chosen)


def capture_rules(args: argparse.Namespace) -> CaptureRules | None:
    """The --capture flags as rules (None without --capture); SettingsError out of range."""
    if args.capture is None:
        return None
    if not 0 <= args.capture_below <= 1:
        raise SettingsError("--capture-below must be between 0 and 1")
    if args.capture_per_minute < 1 or args.capture_keep < 1 or args.capture_mb <= 0:
        raise SettingsError("--capture-per-minute, --capture-keep and --capture-mb must be "
                            "above 0")
    if args.capture.exists() and not args.capture.is_dir():
        raise SettingsError(f"--capture {args.capture}: exists and is not a folder")
    return CaptureRules(args.capture, args.capture_below, args.capture_per_minute,
                        args.capture_keep, int(args.capture_mb * 2**20))


def parse_settings(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   threads: int | None = None) -> Settings:
    """resolve(), with a bad value reported by the parser (usage, one line, exit 2)."""
    try:
        return resolve(args, threads)
    except SettingsError as error:
        parser.error(str(error))
