"""How long a worker takes to restore a partition's episode state from the state topic.

Writes the state records of N machines with open episodes (8 channels each, as the worker
writes them) into one partition of a state topic on the embedded broker, then restores it as
a worker does on assignment (a fresh group-less consumer, read to the high watermark, JSON,
the newest committed record per key), three times, and prints the times.

    .venv/bin/python benchmarks/restore.py                  # 10,000 machines
    .venv/bin/python benchmarks/restore.py --machines 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

from demo.broker import EmbeddedBroker, create_topics  # noqa: E402
from model.episodes import Episode, EpisodeConfig  # noqa: E402
from model.simulator import CHANNELS  # noqa: E402
from worker.state import ChangelogReader, EpisodeState  # noqa: E402

T0 = 1_700_000_000.0


def state_records(machines: int, batches: int) -> list[tuple[bytes, bytes]]:
    """What `batches` batches of the worker write for `machines` open episodes."""
    state = EpisodeState(EpisodeConfig(), "bench.windows", "bench", lambda partitions: {})
    records = []
    for b in range(batches):
        tracker = state.tracker(0, b * machines)
        for m in range(machines):
            t = T0 + b
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
            tracker.observe(
                f"pump-{m:06d}",
                t,
                stamp,
                3.0 + b,
                2.0,
                lambda: [(c, 1 / len(CHANNELS)) for c in CHANNELS],
                "autoencoder",
                {"topic": "bench.windows", "partition": 0, "offset": b * machines + m},
            )
        records += state.finish(0, (b + 1) * machines)
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=2, help="records per machine")
    args = parser.parse_args()
    records = state_records(args.machines, args.batches)
    size = sum(len(v) for _, v in records) / len(records)
    print(f"{len(records)} state records, {size:.0f} bytes each on average")
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, {"bench.state": 1})
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
        for key, value in records:
            producer.send("bench.state", key=key, value=value, partition=0)
        producer.flush()
        producer.close()
        times, found = [], 0
        for _ in range(3):
            consumer = KafkaConsumer(
                bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False
            )
            reader = ChangelogReader(consumer, "bench.state", timeout=120)
            state = EpisodeState(EpisodeConfig(), "bench.windows", "bench", reader)
            started = time.perf_counter()
            tracker = state.tracker(0, args.batches * args.machines)
            times.append(time.perf_counter() - started)
            found = len(tracker.episodes)
            reader.close()
    assert found == args.machines, found
    print(
        f"restore of {found} open episodes in one partition: median "
        f"{statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)})"
    )
    assert all(isinstance(e, Episode) for e in tracker.episodes.values())
    return 0


if __name__ == "__main__":
    sys.exit(main())
