"""Turning numbers, timestamps and error messages into short display strings.

Shared by the terminal table, the Markdown summary and the HTML report so that all three
show the same precision. A missing value is always shown as an em dash.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

MISSING = "—"

AUROC_DIGITS = 3
ACCURACY_DIGITS = 3
THROUGHPUT_DIGITS = 0
MEMORY_DIGITS = 0
STEP_TIME_DIGITS = 1


def is_missing(value: Any) -> bool:
    """True for None, NaN, pandas NA and anything that is not a real number."""
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def plural(n: int, word: str, shown: str | None = None) -> str:
    """``1 seed`` / ``2 seeds`` / ``0 seeds``: the count (or ``shown`` in its place, e.g. a range
    ``1-3``) and ``word`` with an ``s`` unless ``n`` is 1 (``study`` -> ``studies``). The one
    plural of the report."""
    if n != 1:
        word = (
            word[:-1] + "ies" if word.endswith("y") and word[-2:-1] not in "aeiou" else word + "s"
        )
    return f"{n if shown is None else shown} {word}"


def fmt_number(value: Any, digits: int = 3) -> str:
    """``0.8123`` -> ``"0.812"``; thousands separators once the value is 1,000 or more."""
    if is_missing(value):
        return MISSING
    return f"{float(value):,.{digits}f}"


def fmt_mean_std(mean: Any, std: Any, digits: int = 3) -> str:
    """``"0.812 ± 0.004"``; the std is an em dash when there is only one seed."""
    if is_missing(mean):
        return MISSING
    return f"{fmt_number(mean, digits)} ± {fmt_number(std, digits)}"


def fmt_ci(mean: Any, low: Any, high: Any, digits: int = 3) -> str:
    """A symmetric interval as ``"0.812 ± 0.011"`` (mean ± half its width); the mean alone
    when there is no interval (one seed)."""
    if is_missing(mean):
        return MISSING
    if is_missing(low) or is_missing(high):
        return fmt_number(mean, digits)
    return f"{fmt_number(mean, digits)} ± {fmt_number((float(high) - float(low)) / 2, digits)}"


def fmt_signed(value: Any, digits: int = 3) -> str:
    """``+0.012`` / ``−0.004`` (a true minus sign), or an em dash."""
    if is_missing(value):
        return MISSING
    text = f"{float(value):+,.{digits}f}"
    return text.replace("-", "−")


def fmt_p(value: Any) -> str:
    """A p-value: ``0.034``, ``<0.001``, or an em dash."""
    if is_missing(value):
        return MISSING
    return "<0.001" if float(value) < 0.001 else f"{float(value):.3f}"


def fmt_ratio(value: Any) -> str:
    """``1.23×``, or an em dash."""
    if is_missing(value) or math.isinf(float(value)):
        return MISSING
    return f"{float(value):.2f}×"


def fmt_int(value: Any) -> str:
    """An integer count or epoch number, or an em dash."""
    if is_missing(value):
        return MISSING
    return str(int(value))


def fmt_duration(seconds: Any) -> str:
    """``42.3`` -> ``"42.3 s"``, ``185`` -> ``"3 min 05 s"``, ``7384`` -> ``"2 h 03 min"``."""
    if is_missing(seconds):
        return MISSING
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO timestamp from the manifest, or None when absent or unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def fmt_timestamp(value: Any) -> str:
    """``"2025-01-31T12:00:00+00:00"`` -> ``"2025-01-31 12:00:00 +00:00"``; raw text if odd."""
    parsed = parse_timestamp(value)
    if parsed is None:
        return str(value) if value else MISSING
    text = parsed.strftime("%Y-%m-%d %H:%M:%S")
    if parsed.tzinfo is not None:
        offset = parsed.strftime("%z")
        text += " UTC" if offset == "+0000" else f" {offset[:3]}:{offset[3:]}"
    return text


def error_line(error: Any, limit: int = 240) -> str:
    """The one line of an error worth showing: a traceback's last line, else the first line."""
    if not isinstance(error, str) or not error.strip():
        return ""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def is_vector(value: Any) -> bool:
    """A list, or a numpy array of one dimension or more (pyarrow's list column values)."""
    return isinstance(value, list | tuple) or getattr(value, "ndim", 0) > 0


def fmt_setting(value: Any) -> str:
    """A tuned or swept value: a number to 4 significant digits, a vector of weights as a list."""
    if is_vector(value):
        return "[" + ", ".join(fmt_setting(float(v)) for v in list(value)) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def fmt_space(entry: Any) -> str:
    """A search-space entry of the tuning section: ``log_uniform [0.0001, 0.01]``."""
    if isinstance(entry, dict) and len(entry) == 1:
        kind, values = next(iter(entry.items()))
        shown = ", ".join(fmt_setting(v) for v in values) if isinstance(values, list) else values
        return f"{kind} [{shown}]"
    return str(entry)


def fmt_settings(settings: dict[str, Any] | None) -> str:
    """``train.lr=0.001, train.weight_decay=0``; the em dash for none (no final trial ran)."""
    if settings is None:
        return MISSING
    return ", ".join(f"{k}={fmt_setting(v)}" for k, v in settings.items())
