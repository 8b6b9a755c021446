"""The `file,score,flag` record, in one place for the scorer's command and for scoring on
Ray (`runtime.ray_scoring`), so both print the same bytes for the same image."""

from __future__ import annotations

from collections.abc import Iterable

_NEEDS_QUOTES = frozenset(',"\r\n')


def printed_score(score: float, threshold: float) -> tuple[str, int]:
    """The score as printed (6 decimals) and its flag, computed from the printed score so
    that the two always agree."""
    printed = f"{score:.6f}"
    return printed, int(float(printed) >= threshold)


def csv_record(fields: Iterable[object]) -> str:
    """One RFC 4180 record ending in `\\n`.

    Not csv.writer: with `\\n` line ends it leaves a bare CR unquoted, so a name holding CR
    would read back as two records.
    """
    cells = []
    for field in map(str, fields):
        if _NEEDS_QUOTES.intersection(field):
            field = '"' + field.replace('"', '""') + '"'
        cells.append(field)
    return ",".join(cells) + "\n"
