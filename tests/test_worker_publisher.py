"""The publisher on the real broker: keyed outputs go where the default partitioner puts them."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from tests.helpers import read_topic
from worker.kafka import client as kafka_client
from worker.kafka.kafka_python import KeyPartitioner, PyProducer, producer_options
from worker.kafka.publisher import Publisher
from worker.pipeline import Output
from worker.settings import Settings


def java_partition(key: bytes, partitions: int) -> int:
    """The Java client's default: positive murmur2 of the key, modulo the partition count."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def settings_for(bootstrap: str, client: str) -> Settings:
    return Settings(bootstrap_servers=bootstrap, kafka_client=client, max_request_bytes=2**20)


def publish(bootstrap: str, outputs: list[Output]) -> KeyPartitioner:
    options = producer_options(2**20)
    publisher = Publisher(PyProducer(KafkaProducer(bootstrap_servers=bootstrap, **options)))
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


@pytest.mark.parametrize(("pause", "sent"), [(60.0, 0), (0.0, 1)], ids=["paused", "no-pause"])
def test_a_shadow_topic_that_refuses_a_record_is_left_alone_for_a_while(
    bootstrap, make_topic, caplog, pause, sent, kafka_client_name
):
    # A shadow topic that cannot take records would otherwise cost every batch its first
    # send's wait (max_block_ms when the topic is unreachable): after one failure, a pause.
    live, shadow = make_topic("events"), make_topic("shadow")
    too_big = Output(shadow, b"pump-1", b"x" * (2**20 + 1), best_effort=True)  # refused at send
    shadow_record = Output(shadow, b"pump-1", b"{}", best_effort=True)
    producer = kafka_client.open_producer(settings_for(bootstrap, kafka_client_name))
    publisher = Publisher(producer, best_effort_pause=pause)
    try:
        assert publisher.publish([Output(live, b"pump-1", b"{}"), too_big, shadow_record]) == 2
        assert publisher.publish([Output(live, b"pump-1", b"{}"), shadow_record]) == 1 - sent
    finally:
        publisher.close()
    assert len(read_topic(bootstrap, shadow)) == sent  # paused: dropped and counted, not sent
    assert len(read_topic(bootstrap, live)) == 2  # every live record, whatever shadows did
    warnings = [r for r in caplog.records if "shadow record not sent" in r.getMessage()]
    assert len(warnings) == 1


def test_librdkafka_puts_each_key_where_kafka_python_does(bootstrap, make_topic):
    # Mixed fleets and a switch of client keep every machine's events in one partition.
    topic = make_topic("events", 5)
    keys = [f"pump-{i}".encode() for i in range(40)]
    publisher = Publisher(kafka_client.open_producer(settings_for(bootstrap, "confluent")))
    try:
        publisher.publish([Output(topic, key, b"{}") for key in keys])
    finally:
        publisher.close()
    records = read_topic(bootstrap, topic)
    assert {(r.key, r.partition) for r in records} == {(k, java_partition(k, 5)) for k in keys}
