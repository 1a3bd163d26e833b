"""The control topic: one parser for mutes, unmutes and labels (records.py), the global table
every worker holds (table.py) and its reader (reader.py)."""

from worker.control.reader import ControlReader
from worker.control.records import (
    PATTERN_CHARACTERS,
    Label,
    Mute,
    NotAMute,
    Skipped,
    Unmute,
    parse,
    parse_mute,
)
from worker.control.table import MuteTable, Snapshot

__all__ = [
    "PATTERN_CHARACTERS",
    "ControlReader",
    "Label",
    "Mute",
    "MuteTable",
    "NotAMute",
    "Skipped",
    "Snapshot",
    "Unmute",
    "parse",
    "parse_mute",
]
