"""The worker's log lines: key=value text or one JSON object each, never with a secret in them."""

from __future__ import annotations

import json
import logging
import sys
import time

from worker.settings import Settings


def configure_logging(settings: Settings) -> None:
    """One line per record on stderr: key=value text, or one JSON object for log shippers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactSecrets(settings.secret_values()))
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.getLogger("kafka").setLevel(settings.kafka_log_level)


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message"} per line, plus "exception" when there is one."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry)


class RedactSecrets(logging.Filter):
    """Stars instead of a secret, in every form a log line may quote it."""

    # kafka-python at DEBUG logs each request it sends, the SASL PLAIN one with the password
    # in its bytes, and its admin client logs its whole configuration:
    # FAULTWATCH_KAFKA_LOG_LEVEL must not be a way to leak FAULTWATCH_SASL_PLAIN_PASSWORD.

    MASK = "**********"

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        forms = set()
        for secret in filter(None, secrets):
            # as is, and as str, bytes and JSON escape it (repr of a request, of a config dict)
            forms |= {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]}
            forms.add(json.dumps(secret)[1:-1])
        self.forms = sorted(forms, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.forms:
            return True
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:  # rendered now, so the text that is written is the redacted one
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def redact(self, text: str) -> str:
        for form in self.forms:
            text = text.replace(form, self.MASK)
        return text
