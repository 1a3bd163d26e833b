"""`faultwatch mute`, `unmute` and `episodes`, and the episodes CSV of `faultwatch score`.

Mutes are records of the control topic (FAULTWATCH_CONTROL_TOPIC), keyed by the machine id or
pattern; unmuting writes a tombstone for that key. `episodes` reads the control topic and the
state topic (FAULTWATCH_STATE_TOPIC) whole, without a consumer group, and the worker group's
committed offsets to tell saved state from state of a batch still being done. A group that has
committed nothing on the input topic is an error, not "no open episodes": the shell's
FAULTWATCH_GROUP_ID or FAULTWATCH_INPUT_TOPIC is most likely not the workers'.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from model.episodes import Episode, EpisodeRow, scored_episodes
from model.errors import FaultwatchError
from model.recording import Recording, format_time, parse_time, to_rfc3339
from model.scoring import Scores
from worker import settings as settings_io
from worker.control import PATTERN_CHARACTERS, ControlReader, Mute, MuteTable
from worker.errors import BrokerError
from worker.kafka.kafka_python import producer_options
from worker.settings import Settings
from worker.state import ChangelogReader, restore
from worker.state.changelog import EPISODE

DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EPISODE_COLUMNS = [
    "episode_id", "machine_id", "opened_row", "closed_row", "started_at", "opened_at",
    "ended_at", "duration_seconds", "windows", "peak_score", "close_reason", "detector",
    "top_channels",
]  # fmt: skip


# --- score --episodes


def score_episodes(
    args: argparse.Namespace, recording: Recording, end_rows: np.ndarray, scores: Scores, scorer
) -> str:
    """Write the recording's episodes (as the worker would publish them); a line saying so."""
    config = settings_io.load().episode_config()  # FAULTWATCH_EPISODE_*, as the worker reads
    machine = args.machine_id or Path(args.data).stem
    timestamps = [to_rfc3339(recording.timestamps[row]) for row in end_rows]
    # Only the windows the worker would score (finite scores) reach its episodes.
    episodes = scored_episodes(scorer, machine, end_rows, timestamps, scores, config, leaders=True)
    write_episodes(args.episodes, episodes)
    still = sum(1 for e in episodes if e.closed_row is None)
    return f"{len(episodes)} episodes ({still} open at the end) written to {args.episodes}"


def write_episodes(path: Path, episodes: list[EpisodeRow]) -> None:
    """One CSV row per episode; `closed_row`, `ended_at` and `close_reason` empty while open."""
    try:
        out = path.open("w", newline="")
    except OSError as exc:
        raise FaultwatchError(f"{path}: cannot write ({exc.strerror})") from exc
    with out:
        writer = csv.writer(out)
        writer.writerow(EPISODE_COLUMNS)
        for e in episodes:
            channels = " ".join(f"{c['channel']}:{c['share']:.2f}" for c in e.top_channels)
            writer.writerow(
                [
                    e.episode_id,
                    e.machine_id,
                    e.opened_row,
                    "" if e.closed_row is None else e.closed_row,
                    e.started_at,
                    e.opened_at,
                    e.ended_at or "",
                    f"{e.duration_seconds:g}",
                    e.windows,
                    f"{e.peak_score:.6g}",
                    e.close_reason or "",
                    e.detector,
                    channels,
                ]
            )


# --- mute and unmute


def mute_command(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    now = datetime.now(UTC)
    until = None
    if args.duration is not None:
        until = now + args.duration
    elif args.until is not None:
        until = args.until
        if until <= now:
            raise FaultwatchError(f"--until {format_time(until)} is in the past")
    document = {
        "machine": args.machine,
        "mute_until": None if until is None else format_time(until.replace(microsecond=0)),
        "reason": args.reason,
        "at": format_time(now.replace(microsecond=0)),
    }
    send_control(settings, args.machine.encode(), json.dumps(document).encode())
    what = "machines matching" if not PATTERN_CHARACTERS.isdisjoint(args.machine) else "machine"
    end = f"until {document['mute_until']}" if until else "until unmuted"
    print(f"muted {what} {args.machine} {end}: {args.reason}")
    return 0


def unmute_command(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    table = read_mutes(settings)
    mutes = {m.target: m for m in table.active()}
    if args.machine not in mutes:
        by = [m.target for m in mutes.values() if m.names(args.machine)]
        hint = f": it is muted by {', '.join(by)}; unmute that" if by else ""
        raise FaultwatchError(f"{args.machine} is not muted under that name{hint}")
    send_control(settings, args.machine.encode(), None)
    print(f"unmuted {args.machine}")
    return 0


def send_control(settings: Settings, key: bytes, value: bytes | None) -> None:
    """One control record, acknowledged; the topic must exist (nothing creates it by accident)."""
    check_topics(settings, [settings.control_topic])
    try:
        producer = KafkaProducer(
            **settings.kafka_options(), **producer_options(settings.max_request_bytes)
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    try:
        producer.send(settings.control_topic, key=key, value=value).get(timeout=30)
    except KafkaError as exc:
        raise BrokerError(f"{settings.control_topic} refused the command: {exc}") from exc
    finally:
        producer.close(timeout=10)


# --- episodes


def episodes_command(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    mutes = read_mutes(settings).active()
    episodes = read_open_episodes(settings)
    if args.json:
        print(
            json.dumps(
                {
                    "open_episodes": [_summary(e) for e in episodes],
                    "muted": [m.to_dict() for m in mutes],
                },
                indent=2,
            )
        )
        return 0
    _print_episodes(episodes)
    print()
    _print_mutes(mutes)
    return 0


def read_mutes(settings: Settings) -> MuteTable:
    """The control topic, read to its end."""
    check_topics(settings, [settings.control_topic])
    table = MuteTable()
    reader = ControlReader(_consumer(settings), settings.control_topic, table)
    try:
        reader.read_to_end(settings.startup_timeout)
    finally:
        reader.stop()
    return table


def read_open_episodes(settings: Settings) -> list[Episode]:
    """Open episodes of every partition, as a worker restoring it now would find them."""
    check_topics(settings, [settings.state_topic, settings.input_topic])
    consumer = _consumer(settings)
    reader = ChangelogReader(consumer, settings.state_topic, settings.startup_timeout)
    try:
        partitions = sorted(consumer.partitions_for_topic(settings.state_topic) or ())
        resume = _committed(settings, len(partitions))
        if all(offset is None for offset in resume.values()):  # not a false all-clear
            raise FaultwatchError(
                f"no state for group {settings.group_id!r} on {settings.input_topic}: it has "
                "committed nothing there; check FAULTWATCH_GROUP_ID and FAULTWATCH_INPUT_TOPIC "
                "(they must be the workers')"
            )
        changelogs = reader(partitions)
        found = []
        for p in partitions:
            state = restore(
                changelogs[p], resume.get(p) or 0, settings.group_id, settings.input_topic
            )
            found += [e for e in _episodes(state.values) if e.phase == "open"]
    finally:
        reader.close()
    return sorted(found, key=lambda e: (e.started, e.machine_id))


def _episodes(values: dict[tuple[str, str], Any]) -> list[Episode]:
    """The restored episodes (a value the worker could not use is skipped, as it skips it)."""
    found = []
    for (family, _), data in values.items():
        if family == EPISODE:
            try:
                found.append(Episode.from_dict(data))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
    return found


def _committed(settings: Settings, partitions: int) -> dict[int, int | None]:
    """The worker group's committed offsets (read without joining the group)."""
    options = settings.kafka_options() | {"group_id": settings.group_id}
    try:
        consumer = KafkaConsumer(**options, enable_auto_commit=False)
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    try:
        return {
            p: consumer.committed(TopicPartition(settings.input_topic, p))
            for p in range(partitions)
        }
    finally:
        consumer.close(autocommit=False)


def _summary(e: Episode) -> dict[str, Any]:
    return {
        "episode_id": e.id,
        "machine_id": e.machine_id,
        "started_at": e.started_at,
        "opened_at": e.opened_at,
        "last_window_at": e.last_at,
        "duration_seconds": round(e.last - e.started, 3),
        "windows": e.windows,
        "peak_score": e.peak_score,
        "score": e.score,
        "detector": e.detector,
        "top_channels": e.top_channels(3),
        "label": e.label,  # `fault` once an operator confirmed it (faultwatch label)
    }


def _print_episodes(episodes: list[Episode]) -> None:
    if not episodes:
        print("open episodes: none")
        return
    print(f"open episodes: {len(episodes)}")
    header = "EPISODE MACHINE STARTED LAST_WINDOW WINDOWS PEAK NOW LABEL CHANNELS"
    rows = [tuple(h.replace("_", " ") for h in header.split())]  # the id: `faultwatch label`
    for e in episodes:
        channels = ", ".join(f"{c['channel']} {c['share']:.0%}" for c in e.top_channels(3))
        rows.append(
            (
                e.id,
                _printable(e.machine_id),
                e.started_at,
                e.last_at,
                str(e.windows),
                f"{e.peak_score:.3g}",
                f"{e.score:.3g}",
                e.label or "-",
                _printable(channels),
            )
        )
    _table(rows)


def _print_mutes(mutes: list[Mute]) -> None:
    if not mutes:
        print("muted: none")
        return
    print(f"muted: {len(mutes)}")
    rows = [("MACHINE OR PATTERN", "UNTIL", "SINCE", "REASON")]
    for m in mutes:
        rows.append((_printable(m.target), m.mute_until or "unmuted", m.at, _printable(m.reason)))
    _table(rows)


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _printable(text: str) -> str:
    """No terminal escape codes from machine ids or reasons on an operator's screen."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# --- shared


def command_settings(args: argparse.Namespace) -> Settings:
    """The worker's settings for a command that talks to its topics (`--bootstrap-servers` wins)."""
    return settings_io.load({"bootstrap_servers": getattr(args, "bootstrap_servers", None)})


def _consumer(settings: Settings) -> KafkaConsumer:
    try:
        return KafkaConsumer(**settings.kafka_options(), group_id=None, enable_auto_commit=False)
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc


def check_topics(settings: Settings, topics: list[str]) -> None:
    """A missing topic is one clear error: commands never create topics by accident."""
    consumer = _consumer(settings)
    try:
        existing = consumer.topics()
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from exc
    finally:
        consumer.close(autocommit=False)
    missing = [t for t in topics if t not in existing]
    if missing:
        raise BrokerError(
            f"topic {', '.join(missing)} not found at {settings.bootstrap_servers}: create it "
            "(see docs/operating-running.md) or set FAULTWATCH_CONTROL_TOPIC / _STATE_TOPIC"
        )


def duration(text: str) -> timedelta:
    """'2h', '30m', '45s' or '1d' as a timedelta (argparse type)."""
    match = DURATION.match(text.strip())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration such as 2h, 30m or 1d")
    return timedelta(seconds=float(match[1]) * UNITS[match[2]])


def moment(text: str) -> datetime:
    """An RFC 3339 time (argparse type)."""
    try:
        return parse_time(text)
    except FaultwatchError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an RFC 3339 time") from exc
