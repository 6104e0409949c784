"""Markdown tables: the one format every report and benchmark prints."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]],
                   left: int = 1) -> str:
    """A GitHub Markdown table; the first `left` columns align left, the others right."""
    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = [header, align, *([str(cell) for cell in row] for row in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"
