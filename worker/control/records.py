"""The one parser of control records: every reader of the control topic goes through `parse`.

The control topic holds three kinds of record (DESIGN.md, Control):

- a mute: a JSON object without `kind` or with `"kind": "mute"`, `{"machine", "mute_until",
  "reason", "at"}`, keyed by the machine id or pattern it names;
- an unmute: a tombstone (no value). It lifts the mute under its key and nothing else: a label
  is held by its episode id, so a tombstone never deletes one;
- a label: `{"kind": "label", "episode_id", "machine_id", "label", "code", "note", "by", "at"}`,
  keyed by the machine id. A label never mutes: it is not a mute whatever its key.

Anything else (not UTF-8 JSON, not an object, another `kind`, a mute or label missing what it
needs) is a `Skipped` with a stable reason, counted by the reader and otherwise ignored: a
record this version does not understand must neither crash a worker nor mute a machine.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from model.episodes import LABELS, parse_seconds

PATTERN_CHARACTERS = set("*?[")
SkipReason = Literal[
    "invalid_json", "not_an_object", "unknown_kind", "invalid_mute", "invalid_label"
]
SKIP_REASONS: tuple[SkipReason, ...] = get_args(SkipReason)
LabelName = Literal["false-alarm", "fault", "new-normal"]


@dataclass(frozen=True)
class Mute:
    """One mute: a machine id or a pattern, until when, why, since when."""

    target: str
    until: float | None  # epoch seconds; None: until unmuted
    mute_until: str | None
    reason: str
    at: str
    key: bytes = b""  # the record's key: the mute a tombstone of that key lifts

    def names(self, machine: str) -> bool:
        if PATTERN_CHARACTERS.isdisjoint(self.target):
            return machine == self.target
        return fnmatch.fnmatchcase(machine, self.target)

    def holds(self, now: float) -> bool:
        return self.until is None or now < self.until

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.target,
            "mute_until": self.mute_until,
            "reason": self.reason,
            "at": self.at,
        }


@dataclass(frozen=True)
class Unmute:
    """A tombstone: lifts the mute under `key`, and only that."""

    key: bytes


@dataclass(frozen=True)
class Label:
    """An operator's verdict on one episode; the last label of an episode stands."""

    episode_id: str
    machine_id: str
    label: LabelName
    code: str | None
    note: str
    by: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "label",
            "episode_id": self.episode_id,
            "machine_id": self.machine_id,
            "label": self.label,
            "code": self.code,
            "note": self.note,
            "by": self.by,
            "at": self.at,
        }


@dataclass(frozen=True)
class Skipped:
    """A record that is none of the three: why (a stable code) and what was wrong."""

    reason: SkipReason
    detail: str


ControlRecord = Mute | Unmute | Label | Skipped


def parse(key: bytes | None, value: bytes | None) -> ControlRecord:
    """One control record as a Mute, an Unmute, a Label, or Skipped (never an exception)."""
    key = key or b""
    if value is None:
        return Unmute(key)
    try:
        document = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        return Skipped("invalid_json", str(exc)[:200])
    if not isinstance(document, dict):
        return Skipped("not_an_object", f"a JSON {type(document).__name__}")
    kind = document.get("kind", "mute")
    if kind == "mute":
        return _mute(key, document)
    if kind == "label":
        return _label(document)
    return Skipped("unknown_kind", f"kind {str(kind)[:50]!r}")


class NotAMute(ValueError):
    """A control record of another kind (a label): not a mute, and no mistake either."""


def parse_mute(key: bytes | None, value: bytes) -> Mute:
    """A control record that must be a mute: NotAMute for a label, ValueError otherwise."""
    record = parse(key, value)
    if isinstance(record, Label):
        raise NotAMute(f"a label of episode {record.episode_id}")
    if not isinstance(record, Mute):
        raise ValueError(record.detail if isinstance(record, Skipped) else "not a mute")
    return record


def _mute(key: bytes, document: dict[str, Any]) -> Mute | Skipped:
    target = document.get("machine")
    if not target:
        try:
            target = key.decode()
        except UnicodeDecodeError:
            return Skipped("invalid_mute", "no machine, and the key is not UTF-8")
    if not isinstance(target, str) or not target:
        return Skipped("invalid_mute", "no machine")
    until = document.get("mute_until")
    if until is not None and not isinstance(until, str):
        return Skipped("invalid_mute", "mute_until is not RFC 3339 text or null")
    try:
        seconds = None if until is None else parse_seconds(until.replace("Z", "+00:00"))
    except ValueError as exc:
        return Skipped("invalid_mute", f"mute_until: {str(exc)[:100]}")
    reason, at = document.get("reason", ""), document.get("at", "")
    return Mute(target, seconds, until, str(reason), str(at), key)


def _label(document: dict[str, Any]) -> Label | Skipped:
    episode, machine, label = (document.get(k) for k in ("episode_id", "machine_id", "label"))
    if not isinstance(episode, str) or not episode:
        return Skipped("invalid_label", "no episode_id")
    if not isinstance(machine, str) or not machine:
        return Skipped("invalid_label", "no machine_id")
    if label not in LABELS:
        return Skipped("invalid_label", f"label {str(label)[:50]!r} is not one of {LABELS}")
    code = document.get("code")
    if code is not None and not isinstance(code, str):
        return Skipped("invalid_label", "code is not text or null")
    texts = {k: document.get(k, "") for k in ("note", "by", "at")}
    if any(not isinstance(v, str) for v in texts.values()):
        return Skipped("invalid_label", "note, by and at must be text")
    return Label(episode, machine, label, code, texts["note"], texts["by"], texts["at"])
