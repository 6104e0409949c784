#!/usr/bin/env python3
"""Fill a systemd unit template's @NAME@ placeholders, each by systemd's own quoting rules.

  python3 -I devices/render_unit.py TEMPLATE OUT NAME=VALUE...

In ExecStart= each space-separated word of the template becomes one argument, whatever its
values hold (spaces, quotes, backslashes, `&`, `|`, `;`): `%` is written `%%` (specifiers) and
`$` is written `$$` (environment variables; not in the program's path, where systemd expands
none and refuses quotes and backslashes), and a word with any other character than letters,
digits and `_./:,=+@-` is double-quoted with `\\` and `"` escaped. Elsewhere
`%` is written `%%`, and in a file:// URL the path is percent-encoded. A value with a newline or
another control character cannot be written into a unit at all and is refused. Standard library
only: install.sh runs it before any virtual environment exists.
"""

from __future__ import annotations

import re
import sys
import urllib.parse
from pathlib import Path

PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
SAFE = re.compile(r"[A-Za-z0-9_./:,=+%$@-]+")  # needs no quotes (% and $ are doubled)


class UnitError(ValueError):
    """A template or a value that cannot make a valid unit."""


def exec_argument(word: str, executable: bool = False) -> str:
    """One ExecStart word, written so that systemd reads it back as exactly `word`. systemd
    expands no variable in the executable, and refuses quotes or backslashes in its name."""
    if executable and any(c in word for c in "\"'\\"):
        raise UnitError(f"systemd cannot run a program whose path holds a quote or a "
                        f"backslash: {word}")
    specifiers = word.replace("%", "%%") if executable else \
        word.replace("%", "%%").replace("$", "$$")
    if SAFE.fullmatch(word):
        return specifiers
    return '"' + specifiers.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(template: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise UnitError(f"{name} holds a newline or control character: {value!r}")

    def fill(text: str, escape=lambda value: value.replace("%", "%%")) -> str:
        def one(match: re.Match) -> str:
            if match.group(1) not in values:
                raise UnitError(f"no value for @{match.group(1)}@")
            return escape(values[match.group(1)])
        return PLACEHOLDER.sub(one, text)

    lines = []
    for line in template.splitlines():
        if line.startswith("#"):
            if not PLACEHOLDER.search(line):  # the template's notes on its placeholders go
                lines.append(line)
        elif line.startswith("ExecStart="):
            words = line.removeprefix("ExecStart=").split()
            lines.append("ExecStart=" + " ".join(exec_argument(fill(word, str), i == 0)
                                                 for i, word in enumerate(words)))
        elif line.startswith("Documentation=file://"):
            path = fill(line.removeprefix("Documentation=file://"), urllib.parse.quote)
            lines.append("Documentation=file://" + path.replace("%", "%%"))
        else:
            lines.append(fill(line))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not all("=" in pair for pair in argv[2:]):
        print("usage: render_unit.py TEMPLATE OUT NAME=VALUE...", file=sys.stderr)
        return 2
    values = dict(pair.split("=", 1) for pair in argv[2:])
    try:
        text = render(Path(argv[0]).read_text(), values)
    except (UnitError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    Path(argv[1]).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
