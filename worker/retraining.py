"""The retrain job's series, served by the workers that read its models directory.

`faultwatch retrain` is a batch job (a CronJob) with nothing to scrape and no pushgateway:
it writes its counts to `.retrain/metrics.prom` in the models directory (Prometheus text
format, renamed into place), and every worker whose FAULTWATCH_MODEL_PATH is that directory
serves them on its /metrics, read afresh at each scrape. Only `faultwatch_retrain_*` series
pass; every replica serves the same values, so alerts take `max`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

FILE = Path(".retrain") / "metrics.prom"  # in the models directory; written by cli/retrain.py
PREFIX = "faultwatch_retrain_"


class RetrainCollector:
    """A custom collector: the retrain job's last written series, or none."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / FILE

    def describe(self) -> list[Metric]:
        return []  # names change with the file: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        try:
            text = self.path.read_text()
        except OSError:
            return  # no retrain run yet
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            log.warning("retrain metrics unreadable path=%s error=%s", self.path, exc)
            return
        for family in families:
            if family.name.startswith(PREFIX):
                yield family
