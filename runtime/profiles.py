"""Device profiles (devices/<name>/profile.json): engine, threads, camera, resolution, --every.

Read as data, so runtime/ stays free of imports from devices/; `auto` picks the profile that
fits this machine.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

DEVICES = Path(__file__).resolve().parents[1] / "devices"


class ProfileError(ValueError):
    """An unknown or unreadable profile."""


def available() -> list[str]:
    return sorted(p.parent.name for p in DEVICES.glob("*/profile.json"))


def detect() -> str:
    """The profile for this machine, from its architecture and Raspberry Pi model."""
    machine = platform.machine()
    if machine in ("armv7l", "armv6l"):
        return "raspberry-pi-32bit"
    if machine == "aarch64":
        try:
            model = Path("/proc/device-tree/model").read_text(errors="ignore")
        except OSError:
            model = ""
        return "raspberry-pi-5" if "Raspberry Pi 5" in model else "raspberry-pi-4"
    return "linux-x86_64"


def load_profile(name: str) -> dict:
    """A profile by name, `auto`, or the path of a profile.json."""
    if name == "auto":
        name = detect()
    path = Path(name) if name.endswith(".json") else DEVICES / name / "profile.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"unknown profile {name!r}; choose one of: "
                           f"{', '.join(available())}, auto, or a profile.json") from None
    except ValueError as error:
        raise ProfileError(f"{path}: not valid JSON ({error})") from None


def apply_profile(args, threads: int | None = None) -> None:
    """Fill the flags a command line left unset (engine, threads, width, height, every, an
    empty --camera) from `args.profile`, then the defaults; `threads` is the command's own
    default (None: the engine's, all cores). Raises ProfileError for a bad profile or value."""
    profile = load_profile(args.profile) if args.profile else {}
    if args.model.suffix.lower() == ".onnx":
        profile.pop("engine", None)  # a profile names its TFLite engine
    defaults = {"engine": "auto", "threads": threads, "width": None, "height": None, "every": 1}
    for key, default in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, profile.get(key) or default)  # threads 0 means the default
    if args.camera == "":
        args.camera = str(profile.get("camera", "0"))
    if args.every < 1 or (args.threads is not None and args.threads < 1):
        raise ProfileError("--every and --threads must be at least 1")
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise ProfileError("--min-score must be between 0 and 1")

