"""`faultwatch label`: an operator's word on an episode, as a record of the control topic.

Episodes are found where every one of them is kept: the events topic (FAULTWATCH_EVENTS_TOPIC,
episode events: an `opened` event names each episode once it opens); the state topic only
holds open ones. A label is `{"kind": "label", "episode_id", "machine_id", "label", "code",
"note", "by", "at"}` keyed by the machine id (DESIGN.md, Labels); labelling an episode again
is harmless: the last label of an episode stands.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from cli.episodes import check_topics, command_settings, send_control
from cli.replay import TopicRange
from cli.topic_windows import published_episodes, read_topic
from model.errors import FaultwatchError
from model.recording import format_time
from model.retraining import HistoryEpisode
from worker.control import Label, parse
from worker.settings import Settings


def label_command(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    if args.code is not None and args.label != "fault":
        raise FaultwatchError("--code names a fault: use it with --as fault")
    check_topics(settings, [settings.events_topic, settings.control_topic])
    machine = find_episode(settings, args.episode_id)
    document = {
        "kind": "label",
        "episode_id": args.episode_id,
        "machine_id": machine,
        "label": args.label,
        "code": args.code,
        "note": args.note or "",
        "by": args.by or _user(),
        "at": format_time(datetime.now(UTC).replace(microsecond=0)),
    }
    send_control(settings, machine.encode(), json.dumps(document).encode())
    code = f" (code {args.code})" if args.code else ""
    print(f"episode {args.episode_id} of {machine} labelled {args.label}{code}")
    return 0


def find_episode(settings: Settings, episode: str) -> str:
    """The machine of `episode` in the events topic; FaultwatchError when no event names it."""
    needle = episode.encode()
    for record in read_topic(settings, settings.events_topic, TopicRange()):
        if record.value is None or needle not in record.value:
            continue  # most records: no need to parse them
        event = _json(record.value)
        machine = event.get("machine_id") if event else None
        if event and event.get("episode_id") == episode and isinstance(machine, str):
            return machine
    raise FaultwatchError(
        f"no episode {episode} in {settings.events_topic}: see `faultwatch episodes` for the "
        "open ones, or the events topic for the others"
    )


def history(events: Iterable[Any], control: Iterable[Any]) -> list[HistoryEpisode]:
    """The episodes of the events topic, each with the last label the control topic gives it."""
    labels: dict[str, Label] = {}
    for record in control:
        parsed = parse(record.key, record.value)  # the workers' one parser
        if isinstance(parsed, Label):
            labels[parsed.episode_id] = parsed  # the last one stands
    found = []
    for episode, (machine, (start, end)) in published_episodes(events).items():
        if episode.startswith("@"):
            continue  # a per-window event: no episode to label
        label = labels.get(episode)
        found.append(
            HistoryEpisode(
                episode,
                machine,
                start,
                end,
                None if label is None else label.label,
                None if label is None else label.code,
            )
        )
    return sorted(found, key=lambda e: (e.machine_id, e.start))


def _json(value: bytes | None) -> dict[str, Any] | None:
    try:
        document = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        return "unknown"
