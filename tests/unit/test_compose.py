"""docker-compose.yml, Dockerfile and config/prometheus.yml: valid, and consistent with the code's defaults.

No Docker engine runs here: the files are checked statically. The Compose file is validated against the
Compose Specification's JSON Schema as vendored by the ``check-jsonschema`` package (a dev dependency),
then cross-checked against :class:`stream_monitor.config.Settings` and :class:`~stream_monitor.config.Topics`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft201909Validator, Draft202012Validator

from stream_monitor.cli import main
from stream_monitor.config import Settings, Topics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "config" / "prometheus.yml"
ENV_PREFIX = "STREAM_MONITOR_"
PORT = re.compile(r"^(?P<ip>\d+\.\d+\.\d+\.\d+):(?P<host>\d+):(?P<container>\d+)(?:/(?:tcp|udp))?$")
TOPIC = re.compile(r"\brecs\.[a-z_]+\b")


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No STREAM_MONITOR_* from the caller's shell; cwd = repo root, as /app is in the image."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)
    yield monkeypatch


@pytest.fixture
def defaults(clean_env: pytest.MonkeyPatch) -> Settings:
    return Settings()


def _compose_spec_schema() -> dict[str, Any]:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail("check-jsonschema is not installed; it is a dev dependency (pip install -e '.[dev]')")
    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _compose_errors(document: object) -> list[str]:
    schema = _compose_spec_schema()
    # The spec declares "https://json-schema.org/draft-07/schema" (no trailing '#'), a spelling jsonschema's
    # validator_for does not recognise; pick the validator from the draft named in it.
    declared = schema.get("$schema", "")
    drafts = {
        "draft-07": Draft7Validator,
        "draft/2019-09": Draft201909Validator,
        "draft/2020-12": Draft202012Validator,
    }
    matching = [cls for draft, cls in drafts.items() if draft in declared]
    assert len(matching) == 1, f"unexpected $schema {declared!r}"
    cls = matching[0]
    cls.check_schema(schema)
    errors = sorted(cls(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    out = []
    for spec in service.get("ports", []):
        match = PORT.match(str(spec))
        assert match, f"port {spec!r} must be written as IP:HOST:CONTAINER"
        out.append((match["ip"], int(match["host"]), int(match["container"])))
    return out


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def _settings_field(env_name: str) -> tuple[str, ...]:
    """STREAM_MONITOR_TOPICS__ALERTS -> ('topics', 'alerts'); fails for names Settings does not have."""
    assert env_name.startswith(ENV_PREFIX), env_name
    path = tuple(env_name[len(ENV_PREFIX) :].lower().split("__"))
    assert path[0] in Settings.model_fields, f"{env_name}: Settings has no field {path[0]!r}"
    if len(path) == 2:
        assert path[0] == "topics", f"{env_name}: only topics is nested"
        assert path[1] in Topics.model_fields, f"{env_name}: Topics has no field {path[1]!r}"
    else:
        assert len(path) == 1, env_name
    return path


# --- the Compose Specification ------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert _compose_errors(compose) == []


def test_compose_spec_validation_catches_mistakes(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["imagee"] = "typo"
    broken["services"]["redis"]["healthcheck"]["interval"] = 5
    broken["services"]["worker"]["depends_on"]["kafka"]["condition"] = "healthy"
    errors = _compose_errors(broken)
    assert len(errors) >= 3, errors


def test_services(services: dict[str, Any]) -> None:
    assert {"kafka", "redis", "worker", "simulator", "prometheus", "alertmanager", "grafana"} <= set(services)


def test_published_ports_bind_loopback_only(services: dict[str, Any]) -> None:
    published = {name: _ports(svc) for name, svc in services.items()}
    assert all(ip == "127.0.0.1" for ports in published.values() for ip, _host, _ctr in ports), published
    host_ports = [host for ports in published.values() for _ip, host, _ctr in ports]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


# --- Kafka ----------------------------------------------------------------------------------------------


def test_kafka_is_a_single_kraft_node(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    env = _env(kafka)
    assert kafka["image"] == "apache/kafka:4.1.1"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    assert node_id.isdigit()
    assert env.get("CLUSTER_ID"), "KRaft storage is formatted with CLUSTER_ID on first start"

    listeners = _listeners(env["KAFKA_LISTENERS"])
    assert listeners["PLAINTEXT"] == ("", 9092)
    assert listeners["CONTROLLER"] == ("", 9093)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:{listeners['CONTROLLER'][1]}"
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols) == set(listeners)

    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    assert advertised["PLAINTEXT"] == ("kafka", 9092)
    assert "CONTROLLER" not in advertised
    assert set(advertised) <= set(listeners)

    factors = {k: v for k, v in env.items() if k.endswith(("REPLICATION_FACTOR", "_MIN_ISR"))}
    assert "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR" in factors
    assert "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR" in factors
    assert set(factors.values()) == {"1"}, factors

    assert kafka["healthcheck"]["test"], "workers wait for a healthy broker"


def test_host_clients_reach_kafka_at_the_default_bootstrap(
    services: dict[str, Any], defaults: Settings
) -> None:
    """127.0.0.1:9092 on the host lands on a listener that advertises 127.0.0.1:9092 (not kafka:9092)."""
    env = _env(services["kafka"])
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    host, _, port = defaults.kafka_bootstrap.rpartition(":")
    (container_port,) = [ctr for _ip, hp, ctr in _ports(services["kafka"]) if hp == int(port)]
    (listener,) = [name for name, (_h, p) in listeners.items() if p == container_port]
    assert advertised[listener] == (host, int(port))


def test_clients_bootstrap_from_the_advertised_listener(services: dict[str, Any]) -> None:
    advertised = _listeners(_env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"])
    in_network = "{}:{}".format(*advertised["PLAINTEXT"])
    assert advertised["PLAINTEXT"][0] in services
    for name in ("worker", "simulator"):
        assert _env(services[name])["STREAM_MONITOR_KAFKA_BOOTSTRAP"] == in_network, name
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy", name


# --- Redis ----------------------------------------------------------------------------------------------


def test_redis(services: dict[str, Any], defaults: Settings) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    default_port = int(defaults.redis_url.get_secret_value().rsplit(":", 1)[1].split("/")[0])
    assert _ports(redis) == [("127.0.0.1", default_port, 6379)]
    assert shlex.join(redis["healthcheck"]["test"][1:]) == "redis-cli ping"
    url = _env(services["worker"])["STREAM_MONITOR_REDIS_URL"]
    assert re.fullmatch(r"redis://redis:6379/\d+", url), url


# --- worker and simulator -------------------------------------------------------------------------------


def test_worker_env_vars_are_settings_fields(services: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    for name in ("worker", "simulator"):
        env = _env(services[name])
        assert env, name
        for key, value in env.items():
            _settings_field(key)
            clean_env.setenv(key, value)
        settings = Settings()  # the container's settings: parses, and each variable took effect
        for key, value in env.items():
            path = _settings_field(key)
            current: Any = settings
            for part in path:
                current = getattr(current, part)
            if hasattr(current, "get_secret_value"):
                current = current.get_secret_value()
            assert str(current) == value, key
        for key in env:
            clean_env.delenv(key)


def test_worker(services: dict[str, Any], defaults: Settings) -> None:
    worker = services["worker"]
    env = _env(worker)
    assert worker["build"] == "."
    assert worker["command"] == ["stream-monitor", "worker"]
    assert env["STREAM_MONITOR_METRICS_ADDR"] == "0.0.0.0"
    assert env["STREAM_MONITOR_WEB_HOST"] == "0.0.0.0"
    assert int(env["STREAM_MONITOR_METRICS_PORT"]) == defaults.metrics_port
    assert ("127.0.0.1", defaults.metrics_port, defaults.metrics_port) in _ports(worker)
    if "STREAM_MONITOR_WEB_PORT" in env:
        assert int(env["STREAM_MONITOR_WEB_PORT"]) == defaults.web_port
        assert ("127.0.0.1", defaults.web_port, defaults.web_port) in _ports(worker)
    for dependency in ("kafka", "redis"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"
        assert services[dependency]["healthcheck"]["test"], dependency
    healthcheck = " ".join(worker.get("healthcheck", {}).get("test", []))
    for port in re.findall(r"127\.0\.0\.1:(\d+)", healthcheck):
        assert int(port) == defaults.metrics_port


def test_simulator(services: dict[str, Any]) -> None:
    simulator = services["simulator"]
    assert simulator["build"] == "."
    assert simulator["command"] == [
        "stream-monitor",
        "simulate",
        "--rate",
        "200",
        "--incident",
        "latency_regression",
    ]


def test_commands_exist(services: dict[str, Any]) -> None:
    """The compose commands are the installed script and sub-commands the CLI accepts, arguments included."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = pyproject["project"]["scripts"]
    argvs = {}
    for name in ("worker", "simulator"):
        program, *argv = services[name]["command"]
        assert program in scripts, name
        if importlib.util.find_spec(f"stream_monitor.cli.{argv[0]}") is None:
            pytest.skip(f"stream_monitor.cli.{argv[0]} is not written yet")
        assert argv[0] in main.COMMANDS, f"{name}: {argv[0]!r} is not registered in stream_monitor.cli.main"
        argvs[name] = argv
    parser = main.build_parser()
    for name, argv in argvs.items():
        assert parser.parse_args(argv).command == argv[0], name


# --- topics ---------------------------------------------------------------------------------------------


def test_topic_names_are_the_defaults(services: dict[str, Any], defaults: Settings) -> None:
    topics = Topics().model_dump()
    assert defaults.topics.model_dump() == topics
    texts = [
        COMPOSE.read_text(encoding="utf-8"),
        DOCKERFILE.read_text(encoding="utf-8"),
        PROMETHEUS.read_text(),
    ]
    mentioned = {name for text in texts for name in TOPIC.findall(text)}
    assert mentioned <= set(topics.values()), mentioned - set(topics.values())
    for service in services.values():
        for key, value in _env(service).items():
            if key.startswith(f"{ENV_PREFIX}TOPICS__"):
                assert value == topics[_settings_field(key)[1]], key
            if key == f"{ENV_PREFIX}TOPIC_PARTITIONS":
                assert int(value) == defaults.topic_partitions


def test_topics_are_created_co_partitioned(services: dict[str, Any], defaults: Settings) -> None:
    """Auto-created and explicitly created topics get topic_partitions partitions: serving and engagement
    (both keyed by request_id) must have the same count to be joined without a repartition."""
    assert int(_env(services["kafka"])["KAFKA_NUM_PARTITIONS"]) == defaults.topic_partitions
    init = services.get("kafka-init")
    if init is None:
        return
    script = "\n".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    loop = re.search(r"for topic in ([^;]+);", script)
    assert loop, script
    assert set(loop.group(1).split()) == set(Topics().model_dump().values())
    assert re.findall(r"--partitions (\d+)", script) == [str(defaults.topic_partitions)]
    assert re.findall(r"--replication-factor (\d+)", script) == ["1"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("worker", "simulator"):
        assert services[name]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


# --- Prometheus -----------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_worker(services: dict[str, Any], defaults: Settings) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert _ports(prometheus) == [("127.0.0.1", 9090, 9090)]
    mounts = [str(v).split(":") for v in prometheus["volumes"]]
    assert ["./config/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"] in mounts
    assert PROMETHEUS.is_file()

    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"worker:{defaults.metrics_port}"]
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host in services and int(port) == defaults.metrics_port


# --- Dockerfile -----------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [
        ln for ln in DOCKERFILE.read_text(encoding="utf-8").splitlines() if not ln.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
        for parts in (ln.strip().split(None, 1) for ln in joined.splitlines() if ln.strip())
    ]


def test_dockerfile() -> None:
    instructions = _dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert "ENTRYPOINT" not in [name for name, _ in instructions]
    runs = " ".join(args for name, args in instructions if name == "RUN")
    assert re.search(r"\bpip install \.(\s|$)", runs), runs
    (cmd,) = [args for name, args in instructions if name == "CMD"]
    assert json.loads(cmd) == ["stream-monitor", "worker"]


# --- alerting: Prometheus rules, Alertmanager, Grafana ------------------------------------------------------

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "stream-monitor.json"


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts: container path -> host path (relative to the repository), all read-only."""
    out = {}
    for volume in service.get("volumes", []):
        host, container, *mode = str(volume).split(":")
        if host.startswith("./"):
            assert mode == ["ro"], f"{volume}: mount configuration read-only"
            assert (ROOT / host).exists(), f"{volume}: {host} does not exist"
            out[container] = host
    return out


def test_prometheus_evaluates_the_rules_and_sends_to_alertmanager(services: dict[str, Any]) -> None:
    from fnmatch import fnmatch

    mounts = _mounts(services["prometheus"])
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    (pattern,) = config["rule_files"]
    (rules_dir,) = [c for c, h in mounts.items() if h == "./deploy/prometheus/rules"]
    rules = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    assert rules
    for path in rules:
        assert fnmatch(f"{rules_dir}/{path.name}", pattern), (path.name, pattern)
    (am,) = config["alerting"]["alertmanagers"]
    targets = [t for static in am["static_configs"] for t in static["targets"]]
    assert targets == ["alertmanager:9093"]
    assert "alertmanager" in services and ("127.0.0.1", 9093, 9093) in _ports(services["alertmanager"])


def test_prometheus_config_with_the_rules_passes_promtool(tmp_path: Path) -> None:
    from tests.unit._promql import tool

    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / "*.yml")]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config), encoding="utf-8")
    import subprocess

    done = subprocess.run(
        [tool("promtool"), "check", "config", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") >= 1 + 2, done.stdout  # the config and both rule files


def test_alertmanager_service(services: dict[str, Any]) -> None:
    alertmanager = services["alertmanager"]
    assert alertmanager["image"].startswith("prom/alertmanager:")
    mounts = _mounts(alertmanager)
    config_flag = next(a for a in alertmanager["command"] if a.startswith("--config.file="))
    assert mounts[config_flag.split("=", 1)[1]] == "./deploy/alertmanager/alertmanager.yml"
    assert "--cluster.listen-address=" in alertmanager["command"], "no gossip listener on 0.0.0.0:9094"
    assert _ports(alertmanager) == [("127.0.0.1", 9093, 9093)]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert _ports(grafana) == [("127.0.0.1", 3000, 3000)]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert ("127.0.0.1", 9090, 9090) in _ports(services["prometheus"])
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "stream-monitor.yml").read_text())[
        "providers"
    ]
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}" and DASHBOARD.is_file()
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == datasource["uid"]


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [
        (v["name"], v["query"]["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    exprs += [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    return exprs


def test_dashboard_reads_only_series_that_exist() -> None:
    """Every series a panel, variable or annotation reads is exported by the worker (or recorded by the
    rules, or Prometheus' own), with labels it has: the dashboard cannot drift from the code."""
    from tests.unit._promql import (
        PROMETHEUS_SERIES,
        TARGET_LABELS,
        metric_names,
        registered_series,
        selectors,
    )

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exported = registered_series()
    recorded = {
        rule["record"]
        for path in (DEPLOY / "prometheus" / "rules").glob("*.yml")
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    exprs = _dashboard_exprs(dashboard)
    assert len(exprs) >= 30
    seen = set()
    for where, expr in exprs:
        # label_values(metric{...}, label) is Grafana's, not PromQL: check the selector inside.
        query = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", expr.strip())
        names = metric_names(query)
        assert names, f"{where}: no series in {expr!r}"
        for name in names:
            known = name in exported or name in recorded or name in PROMETHEUS_SERIES
            assert known, f"{where}: {name} is not exported, recorded or Prometheus' own"
            seen.add(name)
        for metric, matchers in selectors(query):
            if metric in exported:
                assert set(matchers) <= exported[metric] | TARGET_LABELS, (
                    f"{where}: {metric} {sorted(matchers)}"
                )
    assert {"stream_monitor_signal_value", "stream_monitor_consumer_lag_messages"} <= seen


def test_dashboard_covers_the_signal_path() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == [
        "Arrival and volume",
        "Outcomes",
        "Freshness",
        "Datasets",
        "Drift",
        "Funnel",
        "Ranking",
        "Labels and CTR",
        "Latency and SLO burn",
        "Canary and releases",
        "Worker health",
    ]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # Signals read directly, or through a series recorded by the rules.
    exprs = [e for _w, e in _dashboard_exprs(dashboard)]
    for path in (DEPLOY / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            exprs += [
                r["expr"] for r in group["rules"] if "record" in r and any(r["record"] in e for e in exprs)
            ]
    shown = {s for e in exprs for group in re.findall(r'signal=~?"([a-z_|]+)"', e) for s in group.split("|")}
    path_signals = {"volume", "error_rate", "freshness", "dataset_arrival", "feature_drift", "score_drift"}
    path_signals |= {"candidate_source", "funnel", "score_collapse", "diversity", "popularity", "labels"}
    path_signals |= {
        "engagement_ratio",
        "label_join",
        "latency",
        "error_budget_burn",
        "release",
        "release_ctr",
    }
    assert path_signals <= shown, path_signals - shown
    # The rows the runbooks send people to exist.
    for runbook in (ROOT / "docs" / "runbooks").glob("*.md"):
        for row in re.findall(r'row "([^"]+)"', runbook.read_text(encoding="utf-8")):
            assert row in rows, f"{runbook.name} refers to a dashboard row {row!r} that does not exist"
