"""Mutes: the control topic read whole by every worker, as a table (no consumer group).

A record keyed by a machine id or a pattern (`press-*`, fnmatch rules) with the JSON value
`{"machine", "mute_until": RFC 3339 or null (until unmuted), "reason", "at"}` mutes the
machines it names; a later record with the same key replaces it, a tombstone (no value)
unmutes. Mutes are an operator's action on the live plant, so they follow the wall clock:
a window is muted when it is processed while a mute holds, whatever its data time.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from model.episodes import parse_seconds
from worker.errors import BrokerError

log = logging.getLogger(__name__)

NOT_MUTED = -1.0  # cached "no mute names this machine"
MAX_CACHED = 100_000  # machine ids remembered per table version (as the routing cache's)
PATTERN_CHARACTERS = set("*?[")


@dataclass(frozen=True)
class Mute:
    """One mute of the table: a machine id or a pattern, until when, why, since when."""

    target: str
    until: float | None  # epoch seconds; None: until unmuted
    mute_until: str | None
    reason: str
    at: str

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


class NotAMute(ValueError):
    """A control record of another kind (a label): not a mute, and no mistake either."""


def parse_mute(key: bytes | None, value: bytes) -> Mute:
    """A control record as a Mute; NotAMute for a label, ValueError when it is neither."""
    document = json.loads(value)
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("kind", "mute") != "mute":
        raise NotAMute(f"a {document.get('kind')!r} record")
    target = document.get("machine") or (key or b"").decode()
    if not isinstance(target, str) or not target:
        raise ValueError("no machine")
    until = document.get("mute_until")
    if until is not None and not isinstance(until, str):
        raise ValueError("mute_until is not RFC 3339 text or null")
    return Mute(
        target,
        None if until is None else parse_seconds(until.replace("Z", "+00:00")),
        until,
        str(document.get("reason", "")),
        str(document.get("at", "")),
    )


class MuteTable:
    """The control topic's latest record per key; thread-safe, read once per window."""

    def __init__(
        self, clock: Callable[[], float] = time.time, max_cached: int = MAX_CACHED
    ) -> None:
        self.clock = clock
        self.max_cached = max_cached  # machine ids remembered per version, then start over
        self._mutes: dict[bytes, Mute] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped by every change
        self._cache: dict[str, float | None] = {}  # machine -> until (None: no end), this version
        self._cached_version = -1

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One control record: a mute, or a tombstone that lifts the one under its key."""
        key = key or b""
        with self._lock:
            if value is None:
                if self._mutes.pop(key, None) is None:
                    return
            else:
                try:
                    self._mutes[key] = parse_mute(key, value)
                except NotAMute:
                    return  # a label under the machine's key: its mute (if any) stands
                except (ValueError, UnicodeDecodeError) as exc:
                    log.warning("control record ignored key=%r error=%s", key[:100], exc)
                    return
            self.version += 1

    def mutes(self) -> list[Mute]:
        with self._lock:
            return list(self._mutes.values())

    def active(self, now: float | None = None) -> list[Mute]:
        """The mutes that hold now."""
        now = self.clock() if now is None else now
        return sorted((m for m in self.mutes() if m.holds(now)), key=lambda m: m.target)

    def checker(self) -> Callable[[str], bool]:
        """Whether a machine is muted now (one `now` for a whole batch)."""
        return self.snapshot()[0]

    def snapshot(self) -> tuple[Callable[[str], bool], int]:
        """(the checker, the table's version it reflects), read together under the lock."""
        with self._lock:
            if not self._mutes:
                return _never, self.version
            if self._cached_version != self.version:
                self._cache, self._cached_version = {}, self.version
            mutes, version = list(self._mutes.values()), self.version
        now, cache, bound = self.clock(), self._cache, self.max_cached

        def muted(machine: str) -> bool:
            if machine in cache:
                until = cache[machine]
            else:
                if len(cache) >= bound:  # a machine id per record must not grow it forever
                    cache.clear()
                until = cache[machine] = _until(machine, mutes)
            return until != NOT_MUTED and (until is None or now < until)

        return muted, version


def _until(machine: str, mutes: list[Mute]) -> float | None:
    """How long the mutes that name the machine hold: the latest end (None: no end)."""
    ends = [m.until for m in mutes if m.names(machine)]
    if not ends:
        return NOT_MUTED
    return None if None in ends else max(e for e in ends if e is not None)


def _never(machine: str) -> bool:
    return False


class ControlReader:
    """Reads the whole control topic into a MuteTable, then follows it on its own thread."""

    def __init__(self, consumer: KafkaConsumer, topic: str, table: MuteTable) -> None:
        self.consumer = consumer
        self.topic = topic
        self.table = table
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float) -> ControlReader:
        """Read up to the end first (mutes hold from the first batch on), then follow."""
        self.read_to_end(timeout)
        log.info("control topic read topic=%s mutes=%d", self.topic, len(self.table.active()))
        self._thread = threading.Thread(target=self._follow, name="control", daemon=True)
        self._thread.start()
        return self

    def read_to_end(self, timeout: float) -> None:
        """Every record up to each partition's end (a fetch's high watermark)."""
        partitions = self.consumer.partitions_for_topic(self.topic) or set()
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(assigned)
        self.consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + timeout
        try:
            while not self._caught_up(assigned):
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"control topic {self.topic} not read to its end within {timeout:g} s"
                    )
        except KafkaError as exc:
            raise BrokerError(f"cannot read control topic {self.topic}: {exc}") from exc

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.consumer.close(autocommit=False)

    close = stop

    def _caught_up(self, assigned: list[TopicPartition]) -> bool:
        self._poll()
        for tp in assigned:
            high = self.consumer.highwater(tp)
            if high is None or self.consumer.position(tp) < high:
                return False
        return True

    def _poll(self) -> None:
        for batch in self.consumer.poll(timeout_ms=200).values():
            for record in batch:
                self.table.apply(record.key, record.value)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except KafkaError as exc:  # the main loop reports the broker; retry quietly here
                log.debug("control topic poll failed error=%s", exc)
                self._stop.wait(1.0)
