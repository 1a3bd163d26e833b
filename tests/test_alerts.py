"""deploy/prometheus: the alert rules, their promtool unit tests, and the scrape config."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "tests" / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"

ALWAYS = "vector(1)"  # an expression that always returns a sample


def promtool_path() -> str:
    """promtool's path; a missing promtool fails the test (make installs Debian's `prometheus`)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: install it with `apt-get install -y prometheus` "
            "(Debian's package; it brings /usr/bin/promtool)"
        )
    return path


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_path(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)}\n{result.stdout}{result.stderr}"


def alerts() -> dict[str, dict]:
    """The alerting rules by name."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def seconds(duration: str) -> int:
    """A Prometheus duration such as 1h30m, 5m or 30s, in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)([smhd])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def test_rules_pass_promtool_check() -> None:
    assert_ok(promtool("check", "rules", str(RULES)))


def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_prometheus_config_is_valid() -> None:
    # rule_files are relative to the config file: run where the config lies, as Prometheus does.
    result = promtool("check", "config", CONFIG.name, cwd=PROMETHEUS)
    assert_ok(result)
    assert "1 rule files found" in result.stdout


def test_config_loads_the_rules_and_scrapes_the_job_the_rules_watch() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert [(PROMETHEUS / f).resolve() for f in config["rule_files"]] == [RULES]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    watched = set(re.findall(r'up\{job="([^"]+)"\}', RULES.read_text()))
    assert watched == {"faultwatch"}
    assert watched <= jobs


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases: dict[str, list[tuple[int, list]]] = {}
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(
                (seconds(case["eval_time"]), case.get("exp_alerts") or [])
            )
    for name, rule in alerts().items():
        checks = cases.get(name, [])
        assert any(expected for _, expected in checks), f"{name}: no test where it fires"
        # Silent after its `for`: a silent check during the pending period proves little.
        hold = seconds(rule.get("for", "0s"))
        assert any(not expected and at > hold for at, expected in checks), (
            f"{name}: no test where it must stay silent after its `for` ({rule.get('for')})"
        )
    assert set(cases) <= set(alerts()), f"tests of unknown alerts: {set(cases) - set(alerts())}"


def test_silent_cases_would_catch_an_alert_that_always_fires(tmp_path: Path) -> None:
    """Mutants: each alert made to fire always, against its silent checks alone: all fail."""
    # promtool passing already proves the firing checks fire; this proves the silent checks
    # look at a moment where a firing alert would show, not only at its pending period.
    tests = yaml.safe_load(RULE_TESTS.read_text())
    runs = {}
    for name in alerts():
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") == name:
                    rule["expr"] = ALWAYS
        silent = []
        for group in tests["tests"]:
            checks = [
                check
                for check in group.get("alert_rule_test", [])
                if check["alertname"] == name and not check.get("exp_alerts")
            ]
            if checks:
                silent.append({**group, "alert_rule_test": checks})
        where = tmp_path / name
        (where / "tests").mkdir(parents=True)
        (where / RULES.name).write_text(yaml.safe_dump(rules))
        (where / "tests" / RULE_TESTS.name).write_text(yaml.safe_dump({**tests, "tests": silent}))
        runs[name] = subprocess.Popen(
            [promtool_path(), "test", "rules", f"tests/{RULE_TESTS.name}"],
            cwd=where,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    survivors = []
    for name, run in runs.items():
        output, _ = run.communicate(timeout=60)
        if run.returncode == 0:
            survivors.append(name)
        else:
            assert "FAILED" in output and f"alertname: {name}" in output, output
    assert not survivors, f"silent checks that would not notice the alert firing: {survivors}"
