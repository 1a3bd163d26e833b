"""Reading sensor recordings (CSV) the same way for `train`, `score` and `replay`."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from model.errors import DataError
from model.preprocessing import fill_forward, fill_gaps, sliding_windows

DEFAULT_IGNORE = ("anomaly", "changepoint")
Fill = Literal["interpolate", "carry"]
MAX_EPOCH_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the last moment datetime holds
# Whole seconds in UTC, as most producers write them.
RFC3339_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


@dataclass(frozen=True)
class Recording:
    """One CSV file: a time column, numeric channels (NaN where a cell is empty)."""

    path: Path
    timestamps: list[str]
    channels: list[str]
    values: np.ndarray  # (N, C) float64, NaN for missing cells
    labels: np.ndarray | None = None  # (N,) bool, known anomalous rows (train --anomaly-column)

    def __len__(self) -> int:
        return len(self.timestamps)

    def head(self, rows: int | None) -> Recording:
        """The first `rows` rows (all when None): the training slice of a run."""
        if rows is None:
            return self
        labels = None if self.labels is None else self.labels[:rows]
        return Recording(
            self.path, self.timestamps[:rows], self.channels, self.values[:rows], labels
        )

    def interval(self) -> float | None:
        """Seconds between rows: the median step, robust to a few gaps and repeated times."""
        try:
            seconds = np.array([parse_time(t).timestamp() for t in self.timestamps])
        except DataError:
            return None
        steps = np.diff(seconds)
        steps = steps[steps > 0]
        return float(np.median(steps)) if len(steps) else None

    def windows(
        self,
        window: int,
        *,
        max_gap: int,
        stride: int = 1,
        from_row: int = 0,
        fill: Fill = "interpolate",
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """The windows `score` and `replay` both see: short gaps filled, gappy windows dropped.

        Returns (end_rows (B,), windows (B, W, C), windows dropped over gaps); only windows
        ending at row >= from_row, every `stride` rows from the first full window. `fill`:
        interpolate gaps of up to `max_gap` rows (a file sees both sides of a gap), or carry
        the last value into at most `max_gap` rows (what the worker does with readings).
        """
        if len(self) < window:
            raise DataError(f"{self.path}: {len(self)} rows, the window needs {window}")
        if fill == "carry":
            values, _ = fill_forward(self.values, max_gap)
        else:
            values, _ = fill_gaps(self.values, max_gap)
        windows = sliding_windows(values, window, stride)
        end_rows = np.arange(window - 1, len(values), stride)
        wanted = end_rows >= from_row
        keep = wanted & ~np.isnan(windows).any(axis=(1, 2))
        return end_rows[keep], windows[keep], int((wanted & ~keep).sum())


def read_recording(
    path: str | Path,
    *,
    time_column: str | None = None,
    ignore_columns: tuple[str, ...] | list[str] = DEFAULT_IGNORE,
    label_column: str | None = None,
) -> Recording:
    """Read a `,` or `;` separated CSV with a header; the first column is time unless named.

    `label_column` names a column of known anomalies (non-zero: anomalous), kept as labels.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty file, expected a CSV header")
    delimiter = ";" if lines[0].count(";") > lines[0].count(",") else ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [name.strip() for name in rows[0]]
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    time_index = _time_index(path, header, time_column)
    ignored = {name.strip() for name in ignore_columns if name.strip()}
    label_index = _label_index(path, header, label_column)
    ignored |= {header[label_index]} if label_index is not None else set()
    keep = [i for i, name in enumerate(header) if i != time_index and name not in ignored]
    if not keep:
        raise DataError(f"{path}: no channel columns left after the time and ignored columns")
    values = np.empty((len(body), len(keep)), dtype=np.float64)
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{r}: {len(row)} fields, the header has {len(header)}")
        for j, i in enumerate(keep):
            values[r - 2, j] = _number(path, r, header[i], row[i])
    timestamps = [row[time_index].strip() for row in body]
    labels = None
    if label_index is not None:
        cells = [
            _number(path, r, header[label_index], row[label_index])
            for r, row in enumerate(body, start=2)
        ]
        labels = np.nan_to_num(np.array(cells, dtype=np.float64)) != 0
    return Recording(path, timestamps, [header[i] for i in keep], values, labels)


def _label_index(path: Path, header: list[str], label_column: str | None) -> int | None:
    if label_column is None:
        return None
    if label_column not in header:
        raise DataError(f"{path}: no anomaly column {label_column!r} in the header")
    return header.index(label_column)


def _time_index(path: Path, header: list[str], time_column: str | None) -> int:
    if time_column is None:
        return 0
    if time_column not in header:
        raise DataError(f"{path}: no time column {time_column!r} in the header")
    return header.index(time_column)


def _number(path: Path, line: int, column: str, cell: str) -> float:
    """A cell as a number; empty, NaN and non-finite cells (`inf`, `1e400`) are missing."""
    cell = cell.strip()
    if not cell or cell.lower() in ("nan", "na", "null"):
        return math.nan
    try:
        value = float(cell.replace(",", "."))  # `;` files often use a decimal comma
    except ValueError:
        raise DataError(
            f"{path}:{line}: column {column!r} is not numeric ({cell!r}); "
            "drop label or text columns with --ignore-columns"
        ) from None
    # No sensor reads infinity: a number beyond float range is a broken cell, not a reading.
    return value if math.isfinite(value) else math.nan


def to_rfc3339(timestamp: str) -> str:
    """A time cell or a message's timestamp as RFC 3339 UTC (naive times are taken as UTC)."""
    if RFC3339_UTC.fullmatch(timestamp):  # already the output's form: one check, an eighth of
        try:  # the time of parsing (the worker does this per record)
            datetime.fromisoformat(timestamp)
            return timestamp
        except ValueError:
            pass  # no such day or time: parse_time says so
    return format_time(parse_time(timestamp))


def format_time(moment: datetime) -> str:
    """An aware UTC datetime as RFC 3339 with a Z."""
    return moment.isoformat().replace("+00:00", "Z")


def parse_time(timestamp: str) -> datetime:
    """RFC 3339 / ISO 8601 text or epoch seconds as an aware UTC datetime, else DataError."""
    text = timestamp.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None and math.isfinite(seconds):
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):  # beyond year 1-9999 (or the platform)
            millis = 1e11 < abs(seconds) < MAX_EPOCH_SECONDS * 1000
            hint = " (epoch milliseconds? faultwatch takes seconds)" if millis else ""
            raise DataError(
                f"timestamp {timestamp!r} is out of range for epoch seconds{hint}"
            ) from None
    if seconds is not None:  # inf, nan, 1e400
        raise DataError(f"timestamp {timestamp!r} is not a finite number of epoch seconds")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"timestamp {timestamp!r} is neither RFC 3339 nor epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC
        raise DataError(f"timestamp {timestamp!r} is out of range in UTC") from None
