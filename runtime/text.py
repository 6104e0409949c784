"""Names as one printable line: what a file name or a model holds never drives the terminal."""

from __future__ import annotations

import os
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def display(name: str | os.PathLike) -> str:
    """`name` with control and format characters (escape sequences, bidi overrides, line
    separators) and bytes that are not UTF-8 written as backslash escapes."""
    text = str(name).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c
                   for c in text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plural(count: int, word: str) -> str:
    """"1 thread", "2 threads", "0 images"."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def counted(counts: dict[str, int]) -> str:
    """"cats 12, dogs 3, unsure 1" (sorted by name); "" for none."""
    return ", ".join(f"{label} {count}" for label, count in sorted(counts.items()))


FRONT_DOOR: str | None = None  # "edgeconv train" while the edgeconv command runs a script


def command_name(typed: str) -> str:
    """How the user ran this script, for its --help: `typed` ("python train/run.py",
    "classify"), or the front door's "edgeconv train" when that ran it."""
    return FRONT_DOOR or typed
