"""The control topic's reader: read whole into a MuteTable before the first batch, then followed
on a thread of its own (every worker reads all of it: a global table, no consumer group)."""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, UnsupportedCodecError

from worker.control.table import MuteTable
from worker.errors import BrokerError

log = logging.getLogger(__name__)


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
            except UnsupportedCodecError as exc:  # the mutes stay as they are: say it loudly
                log.error("control topic %s cannot be decoded error=%s", self.topic, exc)
                self._stop.wait(30.0)
            except KafkaError as exc:  # the main loop reports the broker; retry quietly here
                log.debug("control topic poll failed error=%s", exc)
                self._stop.wait(1.0)
