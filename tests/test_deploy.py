"""deploy/: the Grafana dashboard, docker-compose, the Dockerfile and the Kubernetes manifests."""

# Docker and a cluster cannot run here, so these tests hold the files to the contracts they
# share with each other and with the worker: metric names, settings, topics, ports, probes.
# The alert rules are tested by promtool in test_alerts.py.

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "faultwatch.json"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
RULES = DEPLOY / "prometheus" / "alerts.yml"
# The operator's guide: topics to create, shutdown bound (docs/, built by `make docs`).
RUNNING = ROOT / "docs" / "operating-running.md"

# What the worker exports (worker/metrics.py), as Prometheus stores it: counters with _total,
# histograms as _bucket/_sum/_count. Dashboards and rules may name nothing else but `up`.
EXPORTED = {
    "faultwatch_windows_scored_total",
    "faultwatch_anomalies_total",
    "faultwatch_dead_letters_total",
    "faultwatch_score_bucket",
    "faultwatch_score_sum",
    "faultwatch_score_count",
    "faultwatch_batch_duration_seconds_bucket",
    "faultwatch_batch_duration_seconds_sum",
    "faultwatch_batch_duration_seconds_count",
    "faultwatch_batch_retries_total",
    "faultwatch_consumer_lag",
    "faultwatch_assigned_partitions",
    "faultwatch_ready",
    "faultwatch_seconds_since_last_commit",
    "faultwatch_model_info",
    "faultwatch_model_threshold",
    "faultwatch_episodes_open",
    "faultwatch_episodes_opened_total",
    "faultwatch_episodes_closed_total",
    "faultwatch_episode_duration_seconds_bucket",
    "faultwatch_episode_duration_seconds_sum",
    "faultwatch_episode_duration_seconds_count",
    "faultwatch_late_windows_total",
    "faultwatch_muted_machines",
    "faultwatch_mutes",
    "faultwatch_control_records_skipped_total",
    "faultwatch_partitions_paused",
    "faultwatch_model_reload_failures_total",
    "faultwatch_score_drift",
    "faultwatch_shadow_windows_total",
    "faultwatch_shadow_failures_total",
    "faultwatch_labels_total",
    "faultwatch_readings_received_total",
    "faultwatch_readings_late_total",
    "faultwatch_readings_future_total",
    "faultwatch_readings_extra_total",
    "faultwatch_readings_filled_total",
    "faultwatch_readings_windows_assembled_total",
    "faultwatch_readings_windows_skipped_total",
    "faultwatch_readings_assembly_restarts_total",
    "faultwatch_readings_open_buckets",
    "faultwatch_readings_machines",
}
# The retrain job's series (cli/retrain.py writes them, worker/retraining.py serves them).
RETRAIN = {
    "faultwatch_retrain_runs_total",
    "faultwatch_retrain_promotions_total",
    "faultwatch_retrain_refusals_total",
    "faultwatch_retrain_rollbacks_total",
    "faultwatch_retrain_last_run_timestamp_seconds",
    "faultwatch_retrain_last_promotion_timestamp_seconds",
}
ALLOWED = EXPORTED | RETRAIN | {"up"}  # `up` is Prometheus' own, per scrape target

# Settings every deployment sets explicitly (DESIGN.md, Configuration).
REQUIRED_SETTINGS = {
    "FAULTWATCH_BOOTSTRAP_SERVERS",
    "FAULTWATCH_INPUT_TOPIC",
    "FAULTWATCH_EVENTS_TOPIC",
    "FAULTWATCH_SCORES_TOPIC",
    "FAULTWATCH_DLQ_TOPIC",
    "FAULTWATCH_GROUP_ID",
    "FAULTWATCH_MODEL_PATH",
    "FAULTWATCH_METRICS_PORT",
    "FAULTWATCH_STATE_TOPIC",
    "FAULTWATCH_CONTROL_TOPIC",
}

# Grafana's variables, replaced by a plausible value before PromQL is parsed.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}  # fmt: skip


# --- PromQL ------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = re.findall(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {word for word in words if word.lower() not in PROMQL_WORDS}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels inside collapsed rows
    return [p for p in found if p.get("type") != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p.get("targets", []) if t.get("expr")]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_metric_names_finds_only_metrics() -> None:
    expr = (
        'sum by (reason) (rate(a_total{job="x", reason=~"b|c"}[5m])) / on () group_left () '
        "max without (instance) (b_bucket offset 1m) > bool 0.5 and up or time() - c:rate5m "
        "unless histogram_quantile(0.9, rate(d[$__rate_interval])) > 1e3"
    )
    assert metric_names(expr) == {"a_total", "b_bucket", "up", "c:rate5m", "d"}
    assert metric_names('label_replace(vector(1), "dst", "$1", "src", "(.*)")') == set()


def test_dashboard_and_rules_name_only_exported_metrics() -> None:
    named = {name for expr in dashboard_exprs() + rule_exprs() for name in metric_names(expr)}
    assert named, "no metric found: the extraction is broken"
    assert named <= ALLOWED, f"not exported by the worker: {sorted(named - ALLOWED)}"


def test_allowed_metrics_are_what_the_worker_exports() -> None:
    from prometheus_client import CollectorRegistry

    from worker.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry=registry)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    exported = {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, [""])
    }
    assert EXPORTED <= exported, f"the worker does not export {sorted(EXPORTED - exported)}"


def test_retrain_series_are_what_the_retrain_job_writes(tmp_path: Path) -> None:
    from cli.retrain import read_metrics, write_metrics

    path = tmp_path / "metrics.prom"
    write_metrics(path, {"runs": 1}, last_run=1.0, promoted=True)
    assert set(read_metrics(path)) == RETRAIN


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for n, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:expr_{n}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH: install it with `apt-get install -y prometheus`"
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --- Grafana -----------------------------------------------------------------------------


def test_every_panel_queries_prometheus() -> None:
    found = panels()
    assert len(found) >= 9
    assert len({p["id"] for p in found}) == len(found), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in found:
        targets = panel.get("targets", [])
        assert any(t.get("expr", "").strip() for t in targets), f"{panel['title']}: no query"
        for target in targets:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["refId"]


@pytest.mark.parametrize(
    ("topic", "pattern"),
    [
        ("throughput", r"rate\(faultwatch_windows_scored_total\["),
        ("anomalies", r"rate\(faultwatch_anomalies_total\["),
        ("labels by kind", r"by \(label\) \(increase\(faultwatch_labels_total\["),
        ("dismissed episodes", r'closed_total\{reason=~"dismissed\|new_normal"\}'),
        ("dead letters by reason", r"by \(reason\) \(rate\(faultwatch_dead_letters_total\["),
        ("score p50", r"histogram_quantile\(0\.5, sum by \(le\) \(rate\(faultwatch_score_bucket"),
        ("score p99", r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(faultwatch_score_bucket"),
        ("threshold", r"faultwatch_model_threshold"),
        ("batch p50", r"histogram_quantile\(0\.5, .*faultwatch_batch_duration_seconds_bucket"),
        ("batch p99", r"histogram_quantile\(0\.99, .*faultwatch_batch_duration_seconds_bucket"),
        ("lag per partition", r"by \(topic, partition\) \(faultwatch_consumer_lag\)"),
        ("since last commit", r"faultwatch_seconds_since_last_commit"),
        ("live models", r'by \(model, version\) \(faultwatch_model_info\{role="live"\}\)'),
        ("shadow models", r'by \(model, version\) \(faultwatch_model_info\{role="shadow"\}\)'),
        ("refused model files", r"increase\(faultwatch_model_reload_failures_total\["),
        ("drift by model", r"max by \(model\) \(faultwatch_score_drift\)"),
        ("shadow agreement", r'candidate="anomaly"\}.*/ sum by \(model\) \(rate\(faultwatch_sha'),
        ("flagged by the candidate only", r'live="normal", candidate="anomaly"'),
        ("workers up", r'up\{job="faultwatch"\}'),
        ("open episodes", r"sum\(faultwatch_episodes_open\)"),
        ("muted machines", r"sum\(faultwatch_muted_machines\)"),  # each worker its own
        ("mutes", r"faultwatch_mutes\b"),
        ("episodes opened", r"rate\(faultwatch_episodes_opened_total\["),
        ("episodes closed by reason", r"by \(reason\) \(rate\(faultwatch_episodes_closed_total\["),
        ("episode duration", r"histogram_quantile\(0\.5, .*faultwatch_episode_duration_seconds"),
        ("readings late", r"rate\(faultwatch_readings_late_total\["),
        ("readings future", r"rate\(faultwatch_readings_future_total\["),
        ("windows assembled", r"rate\(faultwatch_readings_windows_assembled_total\["),
        ("windows skipped for gaps", r"rate\(faultwatch_readings_windows_skipped_total\["),
        ("open buckets", r"sum\(faultwatch_readings_open_buckets\)"),
    ],
)
def test_dashboard_shows(topic: str, pattern: str) -> None:
    assert any(re.search(pattern, expr) for expr in dashboard_exprs()), f"no panel for {topic}"


def test_score_quantiles_and_threshold_share_a_panel() -> None:
    exprs = [
        [t["expr"] for t in p["targets"]] for p in panels() if "faultwatch_score_bucket" in str(p)
    ]
    assert any(any("faultwatch_model_threshold" in e for e in group) for group in exprs)


def test_grafana_provisioning_matches_compose() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    providers = yaml.safe_load((provisioning / "dashboards" / "faultwatch.yml").read_text())
    (provider,) = providers["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


# --- docker-compose ----------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def created_topics() -> dict[str, int]:
    """Topic -> partitions, from the topic-creation service's script."""
    script = "\n".join(compose()["services"]["topics"]["command"])
    return {t: int(n) for t, n in re.findall(r"--topic (\S+) --partitions (\d+)", script)}


def faultwatch_commands() -> Iterator[tuple[str, list[str]]]:
    """(service, argv) of every `faultwatch` invocation in the compose file."""
    for name, service in compose()["services"].items():
        if not str(service.get("image", "")).startswith("faultwatch"):
            continue
        command = service.get("command", [])
        if service.get("entrypoint"):  # a shell script: its faultwatch lines
            for line in "\n".join(command).splitlines():
                if line.strip().startswith("faultwatch "):
                    yield name, shlex.split(line)[1:]
        else:
            yield name, list(command)


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"kafka", "topics", "train", "replay", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka = services["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose()["volumes"], f"{name}: undeclared volume {source}"


def workers() -> dict[str, dict]:
    return {n: s for n, s in compose()["services"].items() if s.get("command") == ["run"]}


def test_two_workers_share_one_group() -> None:
    found = workers()
    assert len(found) == 2
    groups = {s["environment"]["FAULTWATCH_GROUP_ID"] for s in found.values()}
    assert len(groups) == 1
    for name, service in found.items():
        assert REQUIRED_SETTINGS <= set(service["environment"]), name
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert {"topics", "train"} <= set(service["depends_on"])


def test_compose_settings_are_worker_settings() -> None:
    from worker.settings import ENV_PREFIX, Settings

    known = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    for name, service in compose()["services"].items():
        variables = {v for v in service.get("environment", {}) if v.startswith(ENV_PREFIX)}
        assert variables <= known, f"{name}: unknown settings {sorted(variables - known)}"


def test_topics_created_are_the_topics_used() -> None:
    topics = created_topics()
    env = next(iter(workers().values()))["environment"]
    names = ("INPUT", "EVENTS", "SCORES", "DLQ", "STATE", "CONTROL")
    used = {env[f"FAULTWATCH_{n}_TOPIC"] for n in names}
    assert set(topics) == used
    assert topics[env["FAULTWATCH_INPUT_TOPIC"]] >= len(workers())  # no idle worker
    script = "\n".join(compose()["services"]["topics"]["command"])
    assert "--if-not-exists" in script
    # the state topic is co-partitioned with the input; state and control are tables
    assert topics[env["FAULTWATCH_STATE_TOPIC"]] == topics[env["FAULTWATCH_INPUT_TOPIC"]]
    for name in ("STATE", "CONTROL"):
        line = next(
            li for li in script.splitlines() if f"--topic {env[f'FAULTWATCH_{name}_TOPIC']} " in li
        )
        assert "--config cleanup.policy=compact" in line, line


def test_replay_feeds_the_workers_input_topic() -> None:
    env = next(iter(workers().values()))["environment"]
    (argv,) = [argv for name, argv in faultwatch_commands() if name == "replay"]
    assert argv[0] == "replay" and "--loop" in argv
    assert argv[argv.index("--topic") + 1] == env["FAULTWATCH_INPUT_TOPIC"]
    assert argv[argv.index("--rate") + 1] == "50"
    # every file it replays is one the train job simulates
    simulated = {a[a.index("--out") + 1] for _, a in faultwatch_commands() if a[0] == "simulate"}
    assert {a for a in argv if a.endswith(".csv")} <= simulated
    trained = [a for name, a in faultwatch_commands() if name == "train" and a[0] == "train"]
    assert [a[a.index("--out") + 1] for a in trained] == [env["FAULTWATCH_MODEL_PATH"]]


def test_compose_commands_are_valid_cli_calls() -> None:
    from cli.main import _parser

    commands = list(faultwatch_commands())
    assert {argv[0] for _, argv in commands} == {"run", "simulate", "train", "inspect", "replay"}
    for name, argv in commands:
        try:
            _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `faultwatch {shlex.join(argv)}` is not a valid command")


def test_prometheus_scrapes_every_worker() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "faultwatch"]
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    expected = {f"{n}:{s['environment']['FAULTWATCH_METRICS_PORT']}" for n, s in workers().items()}
    assert targets == expected
    assert "./prometheus:/etc/prometheus:ro" in compose()["services"]["prometheus"]["volumes"]


# --- Dockerfile --------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile() -> None:
    found = instructions()
    last = dict(found)
    assert {args.split()[0] for kind, args in found if kind == "FROM"} == {"python:3.11-slim"}
    runs = " ".join(args for kind, args in found if kind == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert "pip install -c constraints.txt ." in runs
    assert re.fullmatch(r"\d+(:\d+)?", last["USER"]) and not last["USER"].startswith("0")
    assert json.loads(last["ENTRYPOINT"]) == ["faultwatch"]
    assert json.loads(last["CMD"]) == ["run"]
    assert last["EXPOSE"] == "9108"
    assert "FAULTWATCH_METRICS_PORT=9108" in last["ENV"]
    assert "/healthz" in last["HEALTHCHECK"]


def test_build_context_keeps_what_the_image_copies() -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # nothing by default: .venv, data and models stay out
    included = {p[1:] for p in patterns if p.startswith("!")}
    for kind, args in instructions():
        if kind == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert source in included, f"COPY {source}: excluded by Dockerfile.dockerignore"
                assert (ROOT / source).exists() or source == "README.md", source


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def python_on_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose `python` is this interpreter, as in the image."""
    (tmp_path / "python").symlink_to(sys.executable)
    return {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (None, False)])
def test_healthcheck_asks_healthz_on_the_metrics_port(
    python_on_path: dict[str, str], status: int | None, healthy: bool
) -> None:
    command = dict(instructions())["HEALTHCHECK"]
    shell = command[command.index("CMD ") + 4 :]
    handler = type("Handler", (_Health,), {"status": status or 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    if status is None:
        server.server_close()  # nothing listens
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**python_on_path, "FAULTWATCH_METRICS_PORT": str(port)}
        result = subprocess.run(
            ["/bin/sh", "-c", shell], env=env, capture_output=True, timeout=20, check=False
        )
    finally:
        if status is not None:
            server.shutdown()
            server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr
    assert result.returncode in (0, 1)  # Docker reserves every other status


# --- Kubernetes --------------------------------------------------------------------------


def manifests(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[str, dict]:
    """kind -> the one resource of that kind in the kustomization."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found: dict[str, dict] = {}
    for file in kustomization["resources"]:
        for doc in manifests(K8S / file):
            assert doc["kind"] not in found, f"two {doc['kind']}s"
            found[doc["kind"]] = doc
    return found


def pod(container: str = "worker") -> tuple[dict, dict]:
    spec = resources()["Deployment"]["spec"]["template"]["spec"]
    (found,) = [c for c in spec["containers"] if c["name"] == container]
    return spec, found


def secret_example() -> dict:
    (secret,) = manifests(K8S / "secret.example.yaml")
    return secret


def config() -> dict[str, str]:
    return resources()["ConfigMap"]["data"]


def test_every_manifest_parses_and_is_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == files
    for path in K8S.glob("*.yaml"):
        for doc in manifests(path):
            assert doc["apiVersion"] and doc["kind"], path
    assert set(resources()) == {
        "Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "PodMonitor",
        "PrometheusRule", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication",
        "CronJob",
    }  # fmt: skip
    images = {i["name"] for i in kustomization["images"]}
    spec = resources()["Deployment"]["spec"]["template"]["spec"]
    assert {c["image"] for c in spec["containers"] + spec.get("initContainers", [])} == images


def test_deployment_probes() -> None:
    _, worker = pod()
    port = {p["name"]: p["containerPort"] for p in worker["ports"]}["metrics"]
    assert str(port) == config()["FAULTWATCH_METRICS_PORT"]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["args"] == ["run"]


def test_deployment_resources_fit_one_to_two_cores() -> None:
    spec, worker = pod()
    resources_ = worker["resources"]
    assert set(resources_["requests"]) == set(resources_["limits"]) == {"cpu", "memory"}
    assert 0.5 <= float(resources_["requests"]["cpu"]) <= float(resources_["limits"]["cpu"]) <= 2
    assert config()["FAULTWATCH_TORCH_THREADS"] == "1"


def test_grace_periods_cover_the_worker_s_longest_shutdown() -> None:
    from worker.service import SHUTDOWN_SECONDS

    spec, _ = pod()
    assert spec["terminationGracePeriodSeconds"] >= SHUTDOWN_SECONDS
    for name, service in workers().items():
        grace = service["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) >= SHUTDOWN_SECONDS, name
    assert f"{SHUTDOWN_SECONDS} s" in RUNNING.read_text()  # the bound the docs give


def test_deployment_runs_restricted() -> None:
    spec, _ = pod()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = {}
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "resources" in container, container["name"]
        mounts[container["name"]] = {m["mountPath"]: m for m in container["volumeMounts"]}
    # read-only root: /tmp writable; the models where the settings look for them, read-only
    assert not mounts["worker"]["/tmp"].get("readOnly")
    assert mounts["worker"][config()["FAULTWATCH_MODEL_PATH"]]["readOnly"] is True


def test_models_reach_the_pods_through_a_volume_the_publishing_job_writes() -> None:
    spec, worker = pod()
    (mount,) = [m for m in worker["volumeMounts"] if m["mountPath"] == "/models"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert resources()["PersistentVolumeClaim"]["metadata"]["name"] == claim
    assert "ReadWriteMany" in resources()["PersistentVolumeClaim"]["spec"]["accessModes"]
    assert config()["FAULTWATCH_MODEL_PATH"] == "/models"  # a directory, re-read
    assert float(config()["FAULTWATCH_MODEL_RELOAD_SECONDS"]) > 0
    # The job: its own kustomization (a Job runs once), the model image, the same claim.
    kustomization = yaml.safe_load((K8S / "models" / "kustomization.yaml").read_text())
    (job,) = manifests(K8S / "models" / kustomization["resources"][0])
    assert job["kind"] == "Job"
    template = job["spec"]["template"]["spec"]
    (publish,) = template["containers"]
    assert {i["name"] for i in kustomization["images"]} == {publish["image"]}
    (volume,) = template["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    assert [m["mountPath"] for m in publish["volumeMounts"]] == ["/models"]
    script = publish["command"][-1]
    assert 'cp "$f" "$2/.$n.tmp"' in script and 'mv "$2/.$n.tmp" "$2/$n"' in script
    assert template["securityContext"]["runAsNonRoot"] is True
    assert publish["securityContext"]["readOnlyRootFilesystem"] is True


def test_retrain_runs_nightly_into_the_workers_models_volume() -> None:
    from cli.main import _parser

    cron = resources()["CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"  # promotions never race
    assert len(cron["spec"]["schedule"].split()) == 5
    template = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (job,) = template["containers"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert job["image"] in {i["name"] for i in kustomization["images"]}  # the worker's image
    # A valid call, on the input topic and the directory the workers serve, promoting.
    argv = [
        a.replace("$(FAULTWATCH_INPUT_TOPIC)", config()["FAULTWATCH_INPUT_TOPIC"])
        for a in job["args"]
    ]
    args = _parser().parse_args(argv)
    assert args.command == "retrain" and args.promote
    assert args.from_topic == config()["FAULTWATCH_INPUT_TOPIC"]
    assert str(args.models) == config()["FAULTWATCH_MODEL_PATH"]
    _, worker = pod()
    assert job["envFrom"] == worker["envFrom"]  # the same brokers, topics and secrets
    mounts = {m["mountPath"]: m for m in job["volumeMounts"]}
    assert not mounts[str(args.models)].get("readOnly")  # it renames candidates into it
    volumes = {v["name"]: v for v in template["volumes"]}
    claim = volumes[mounts[str(args.models)]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == resources()["PersistentVolumeClaim"]["metadata"]["name"]
    assert template["securityContext"]["runAsNonRoot"] is True
    assert job["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in mounts  # torch's and HOME's writes, the root being read-only


def test_settings_come_from_the_configmap_and_the_secret() -> None:
    from worker.settings import ENV_PREFIX, Settings

    _, worker = pod()
    sources = {next(iter(s)): s[next(iter(s))]["name"] for s in worker["envFrom"]}
    assert sources["configMapRef"] == resources()["ConfigMap"]["metadata"]["name"]
    assert sources["secretRef"] == secret_example()["metadata"]["name"]
    assert "env" not in worker  # one place for settings
    known = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    assert REQUIRED_SETTINGS <= set(config())
    assert set(config()) | set(secret_example()["stringData"]) <= known
    assert not any("PASSWORD" in key for key in config())


def test_secret_is_an_example_with_a_placeholder() -> None:
    secret = secret_example()
    assert secret["kind"] == "Secret"
    assert "PLACEHOLDER" in secret["stringData"]["FAULTWATCH_SASL_PLAIN_PASSWORD"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]  # never applied by accident


def test_selectors_match_the_pods() -> None:
    found = resources()
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selected = [
        found["Deployment"]["spec"]["selector"]["matchLabels"],
        found["Service"]["spec"]["selector"],
        found["PodMonitor"]["spec"]["selector"]["matchLabels"],
        found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ]
    for selector in selected:
        assert selector.items() <= labels.items()
    monitor = found["PodMonitor"]["spec"]
    assert labels[monitor["jobLabel"]] == "faultwatch"  # the job the alert rules select
    assert {e["port"] for e in monitor["podMetricsEndpoints"]} == {"metrics"}
    assert found["Service"]["spec"]["ports"][0]["targetPort"] == "metrics"
    assert found["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_keda_scales_on_lag_up_to_the_partition_count() -> None:
    found = resources()
    scaled = found["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == found["Deployment"]["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["topic"] == config()["FAULTWATCH_INPUT_TOPIC"]
    assert meta["consumerGroup"] == config()["FAULTWATCH_GROUP_ID"]
    assert meta["bootstrapServers"] == config()["FAULTWATCH_BOOTSTRAP_SERVERS"]
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0
    # one replica per partition at most: the input topic's partitions (as compose creates it)
    assert scaled["maxReplicaCount"] == created_topics()[meta["topic"]]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert "replicas" not in found["Deployment"]["spec"]  # KEDA owns the count
    # KEDA logs in as the worker does
    keda_sasl = {
        "PLAIN": "plaintext",
        "SCRAM-SHA-256": "scram_sha256",
        "SCRAM-SHA-512": "scram_sha512",
    }
    assert meta["sasl"] == keda_sasl[config()["FAULTWATCH_SASL_MECHANISM"]]
    assert (meta.get("tls") == "enable") == config()["FAULTWATCH_SECURITY_PROTOCOL"].endswith("SSL")
    auth = found["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret_example()["metadata"]["name"]
        assert ref["key"] in secret_example()["stringData"]


def test_one_input_partition_count_everywhere() -> None:
    # The docs' topic guide, compose's topics job and KEDA's ceiling: one number.
    guide = re.findall(
        r"--create --topic faultwatch\.windows\s+--partitions (\d+)", RUNNING.read_text()
    )
    keda = resources()["ScaledObject"]["spec"]["maxReplicaCount"]
    assert guide and {int(n) for n in guide} == {created_topics()["faultwatch.windows"], keda}


def test_prometheusrule_carries_the_alert_rules() -> None:
    rule = resources()["PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(RULES.read_text()), (
        "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
        "regenerate it (see its header)"
    )


# --- a real Prometheus scraping a real worker -------------------------------------------


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def worker_metrics(bootstrap, make_topic, tiny_model_path, tmp_path: Path) -> Iterator[int]:
    """A `faultwatch run` process fed real records (anomalies, dead letters): its port."""
    from kafka import KafkaProducer

    from demo.broker import free_port
    from model.scoring import Scorer
    from tests.helpers import start_worker, unique, window_value, worker_env
    from tests.synthetic import normal_values

    window = Scorer.load(tiny_model_path).window
    source, port = make_topic("windows", 2), free_port()
    env = worker_env(
        bootstrap,
        tiny_model_path,
        input_topic=source,
        events_topic=make_topic("events"),
        scores_topic=make_topic("scores"),
        dlq_topic=make_topic("dlq"),
        state_topic=make_topic("state", 2),
        control_topic=make_topic("control"),
        shadow_model_path=tiny_model_path,  # the live model as its own candidate: agreement 1
        shadow_topic=make_topic("shadow"),
        episode_open_seconds=20,
        episode_clear_seconds=5,
        group_id=unique("group"),
        metrics_port=port,
        lag_interval=0.5,
    )
    worker = start_worker(env, tmp_path / "worker.log")
    rows = normal_values(400 + window)
    stop = threading.Event()

    def feed() -> None:
        # Ten records every 100 ms, one of them broken; data time moves a second a record, and
        # every 100th record starts 30 anomalous windows: an episode opens (20 s) and clears (5 s).
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        n = 0
        while not stop.wait(0.1):
            for _ in range(10):
                if n % 10 == 1:
                    value = b"{"
                else:
                    shift = 25.0 if n % 100 < 30 else 0.0
                    value = window_value(
                        "pump-1", 1_700_000_000 + n, rows[n % 400 :][:window] + shift
                    )
                producer.send(source, key=b"pump-1", value=value)
                n += 1
        producer.close(timeout=10)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield port
    finally:
        stop.set()
        feeder.join(timeout=15)
        code = worker.terminate()
    assert code == 0, worker.stderr


@pytest.fixture
def prometheus(worker_metrics: int, tmp_path: Path) -> Iterator[str]:
    """Prometheus with deploy's rules, scraping a real worker that is scoring records."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not on PATH: install it with `apt-get install -y prometheus`"
    config = {
        "global": {"scrape_interval": "500ms", "evaluation_interval": "500ms"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "faultwatch",
                "static_configs": [{"targets": [f"127.0.0.1:{worker_metrics}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{_free_port()}"
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        # Three scrapes of a worker that has scored windows, reported its lag, closed an
        # episode and its drift (500 normal windows): enough for rate() and quantiles.
        # (Prometheus 2.x first scrapes ~5 s after start; the worker joins its group meanwhile.)
        query = urllib.parse.quote(
            "count_over_time(faultwatch_windows_scored_total[1m]) >= 3 "
            "and faultwatch_windows_scored_total > 0 "
            "and on () count(faultwatch_consumer_lag) > 0 "
            "and on () sum(faultwatch_episodes_closed_total) > 0 "
            "and on () count(faultwatch_score_drift) > 0"
        )
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            try:
                if _get_json(f"{url}/api/v1/query?query={query}")["data"]["result"]:
                    break
            except OSError:
                pass  # not listening yet
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def test_live_prometheus_answers_every_panel_and_evaluates_every_rule(prometheus: str) -> None:
    empty = []
    for expr in dashboard_exprs():
        query = expr
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        answer = _get_json(f"{prometheus}/api/v1/query?query={urllib.parse.quote(query)}")
        assert answer["status"] == "success", (expr, answer)
        if not answer["data"]["result"]:
            empty.append(expr)
    assert not empty, f"panels without data from the worker's metrics: {empty}"
    fed = ["faultwatch_anomalies_total", 'faultwatch_dead_letters_total{reason="invalid_json"}']
    for name in fed:
        query = urllib.parse.quote(f"{name} > 0")  # what the feeder sent, seen by the worker
        assert _get_json(f"{prometheus}/api/v1/query?query={query}")["data"]["result"], name
    deadline = time.monotonic() + 10
    while True:  # every rule evaluated at least once, none in error
        rules = [
            rule
            for group in _get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
            for rule in group["rules"]
        ]
        assert not [r for r in rules if r["health"] == "err"], rules
        if len(rules) == len(rule_exprs()) and all(r["health"] == "ok" for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.25)
