"""The publisher on the real broker: keyed outputs go where the default partitioner puts them."""

from __future__ import annotations

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from tests.helpers import read_topic
from worker.pipeline import Output
from worker.publisher import KeyPartitioner, Publisher, producer_options


def java_partition(key: bytes, partitions: int) -> int:
    """The Java client's default: positive murmur2 of the key, modulo the partition count."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def publish(bootstrap: str, outputs: list[Output]) -> KeyPartitioner:
    options = producer_options(2**20)
    publisher = Publisher(KafkaProducer(bootstrap_servers=bootstrap, **options))
    try:
        publisher.publish(outputs)
    finally:
        publisher.close()
    return options["partitioner"]


def test_each_key_keeps_the_default_partition_and_the_cache_stays_bounded(
    bootstrap, make_topic, monkeypatch
):
    monkeypatch.setattr(KeyPartitioner, "MAX_KEYS", 7)
    three, five = make_topic("scores", 3), make_topic("events", 5)
    keys = [f"pump-{i}".encode() for i in range(40)]
    # Each key goes to both topics in turn, as events and score records do.
    outputs = [
        Output(topic, key, b"{}") for _ in range(3) for key in keys for topic in (three, five)
    ]
    partitioner = publish(bootstrap, outputs)

    for topic, count in ((three, 3), (five, 5)):
        records = read_topic(bootstrap, topic)
        assert len(records) == 3 * len(keys)
        assert {(r.key, r.partition) for r in records} == {
            (key, java_partition(key, count)) for key in keys
        }
    assert 0 < len(partitioner._known) <= 7


def test_records_without_a_key_still_spread_over_partitions(bootstrap, make_topic):
    topic = make_topic("dlq", 4)
    publish(bootstrap, [Output(topic, None, b"x") for _ in range(200)])
    assert len({r.partition for r in read_topic(bootstrap, topic)}) > 1
