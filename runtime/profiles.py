"""Device profiles (devices/<name>/profile.json): engine, threads, camera, resolution, --every.

Read as data, so runtime/ stays free of imports from devices/; `auto` picks the profile that
fits this machine, from what each profile says it fits (`arch`, `board`, `default`): a new
profile is one JSON file. Standard library only: `python3 -I runtime/profiles.py` prints the
detected profile on a device that has nothing but Python 3 (install.sh runs it so).
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


def detect(machine: str | None = None, board: str | None = None) -> str:
    """The profile for this machine: among the profiles whose `arch` lists its architecture,
    the one whose `board` is the longest part of its board model (/proc/device-tree/model),
    else the one marked `default` for that architecture."""
    machine = machine or platform.machine()
    board = _board_model() if board is None else board
    fits = {name: profile for name, profile in _profiles().items()
            if machine in profile.get("arch", [])}
    boards = [(len(p["board"]), name) for name, p in fits.items()
              if p.get("board") and p["board"] in board]
    if boards:
        return max(boards)[1]
    defaults = sorted(name for name, profile in fits.items() if profile.get("default"))
    if len(defaults) == 1 or len(fits) == 1:
        return (defaults or list(fits))[0]
    raise ProfileError(f"no profile in {DEVICES} fits this {machine} machine"
                       f"{' (' + board + ')' if board else ''}; choose one of: "
                       f"{', '.join(available())}")


def _board_model() -> str:
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\0\n")
    except OSError:
        return ""


def _profiles() -> dict[str, dict]:
    found = {}
    for path in sorted(DEVICES.glob("*/profile.json")):
        try:
            found[path.parent.name] = json.loads(path.read_text())
        except ValueError:
            continue  # a broken profile is reported when it is asked for by name
    return found


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


if __name__ == "__main__":
    import sys

    try:
        print(detect())
    except ProfileError as error:
        sys.exit(f"error: {error}")
