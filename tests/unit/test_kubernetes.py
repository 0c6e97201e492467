"""deploy/kubernetes/: valid Kubernetes objects, consistent with the worker's settings and endpoints.

No cluster runs here: the manifests are checked statically. Built-in kinds are validated against the
Kubernetes JSON schemas shipped by the ``kubernetes-validate`` package (a dev dependency; strict, so an
unknown or misspelt field fails), for the oldest Kubernetes these manifests support and the newest the
package knows. The custom resources (ServiceMonitor, PrometheusRule, ScaledObject) have no schema in any
PyPI package: they are checked against the small JSON schemas below, written from the Prometheus
Operator's and KEDA's CRDs and covering the fields these manifests use (unknown fields are refused).
Then the objects are cross-checked against each other, :class:`stream_monitor.config.Settings`, the
routes the worker's web server registers and the shipped Prometheus rules.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import faust
import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import SecretStr

from stream_monitor.cli.main import build_parser
from stream_monitor.config import Settings
from stream_monitor.core.clock import ManualClock
from stream_monitor.runtime.gate import READY_TIMEOUT_S, add_gate_views
from stream_monitor.state.memory import MemoryStore
from tests.unit.test_compose import ENV_PREFIX, _settings_field

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
DOCKERFILE = ROOT / "Dockerfile"
# Kubernetes versions validated against: the oldest these manifests support (PodDisruptionBudget's
# unhealthyPodEvictionPolicy is on by default from 1.27) and the newest kubernetes-validate ships.
OLDEST_K8S = "1.27.0"
CUSTOM_KINDS = frozenset({"ServiceMonitor", "PrometheusRule", "ScaledObject"})
# The worker's input topics (runtime/worker.py: WorkerRuntime.inputs), as fields of config.Topics.
INPUT_TOPICS = ("serving", "engagement", "deployments", "datasets")
# Settings the ConfigMap sets on purpose to something other than their default, and why.
NOT_DEFAULT = {
    "kafka_bootstrap": "the cluster's brokers, not 127.0.0.1",
    "metrics_addr": "kubelet and Prometheus reach the pod's IP",
    "web_host": "kubelet probes and the gate's callers reach the pod's IP",
}


# --- loading ------------------------------------------------------------------------------------------


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _objects() -> dict[str, dict[str, Any]]:
    """kind -> object; every manifest file holds exactly one object, and no kind appears twice."""
    out: dict[str, dict[str, Any]] = {}
    for path in _manifest_files():
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        assert len(documents) == 1, f"{path.name}: expected one object, found {len(documents)}"
        kind = documents[0]["kind"]
        assert kind not in out, f"{path.name}: a second {kind}"
        out[kind] = documents[0]
    return out


OBJECTS = _objects()
DEPLOYMENT = OBJECTS["Deployment"]
POD = DEPLOYMENT["spec"]["template"]["spec"]
WORKER = next(c for c in POD["containers"] if c["name"] == "worker")
CONFIG = OBJECTS["ConfigMap"]["data"]
SECRET = OBJECTS["Secret"].get("stringData", {})


@pytest.fixture
def defaults(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the image has them: no STREAM_MONITOR_* from the caller, cwd = repo root (= /app)."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)
    return Settings()


def _settings_from_configmap(monkeypatch: pytest.MonkeyPatch, secrets_dir: Path | None = None) -> Settings:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)
    for name, value in CONFIG.items():
        monkeypatch.setenv(name, value)
    if secrets_dir is not None:
        monkeypatch.setenv("STREAM_MONITOR_SECRETS_DIR", str(secrets_dir))
    return Settings()


def _secret_env_names() -> set[str]:
    """The variables of the settings that are secrets (SecretStr, optional or not)."""
    names = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ()):
            names.add(f"{ENV_PREFIX}{name.upper()}")
    return names


def _worker_routes() -> set[str]:
    """The paths the worker's web server registers (runtime/gate.py), as aiohttp route patterns."""
    app = faust.App("k8s-routes", web_enabled=True)
    add_gate_views(app, MemoryStore(), ManualClock(0), claims_held=lambda: True)
    return {route.resource.canonical for route in app.web.web_app.router.routes() if route.resource}


def _served(path: str, routes: set[str]) -> bool:
    for pattern in routes:
        regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(pattern))
        if re.fullmatch(regex, path):
            return True
    return False


# --- schemas --------------------------------------------------------------------------------------------


def _kubernetes_errors(obj: dict[str, Any], version: str) -> list[str]:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.fail("kubernetes-validate is not installed; it is a dev dependency (pip install -e '.[dev]')")
    from kubernetes_validate import utils as kv

    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in _manifest_files()]


@pytest.mark.parametrize("version", [OLDEST_K8S, "latest"])
@pytest.mark.parametrize("kind", sorted(set(OBJECTS) - CUSTOM_KINDS))
def test_builtin_objects_follow_the_kubernetes_schema(kind: str, version: str) -> None:
    from kubernetes_validate import utils as kv

    assert _kubernetes_errors(OBJECTS[kind], kv.latest_version() if version == "latest" else version) == []


def test_the_kubernetes_schema_check_refuses_a_misspelt_field() -> None:
    broken = copy.deepcopy(DEPLOYMENT)
    context = broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["readOnlyRootFileSystem"] = context.pop("readOnlyRootFilesystem")
    errors = _kubernetes_errors(broken, OLDEST_K8S)
    assert len(errors) == 1 and "readOnlyRootFileSystem" in errors[0]


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# The CRDs' pattern for a Prometheus duration (monitoring.coreos.com/v1 Duration).
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
METADATA = _strict({"name": {"type": "string", "minLength": 1}, "labels": STRING_MAP}, ("name",))
LABEL_SELECTOR = _strict({"matchLabels": STRING_MAP})


def _custom_resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _strict(
        {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA, "spec": spec},
        ("apiVersion", "kind", "metadata", "spec"),
    )


CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    # monitoring.coreos.com_servicemonitors.yaml (Prometheus Operator)
    "ServiceMonitor": _custom_resource(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        _strict(
            {
                "jobLabel": {"type": "string"},
                "selector": LABEL_SELECTOR,
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict(
                        {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                        }
                    ),
                },
            },
            ("selector", "endpoints"),
        ),
    ),
    # monitoring.coreos.com_prometheusrules.yaml (Prometheus Operator)
    "PrometheusRule": _custom_resource(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        _strict(
            {
                "groups": {
                    "type": "array",
                    "items": _strict(
                        {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "rules": {
                                "type": "array",
                                "items": _strict(
                                    {
                                        "record": {"type": "string"},
                                        "alert": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                    ("expr",),
                                ),
                            },
                        },
                        ("name",),
                    ),
                }
            },
        ),
    ),
    # keda.sh_scaledobjects.yaml (KEDA); trigger metadata is a map of strings (no booleans, no numbers).
    "ScaledObject": _custom_resource(
        "keda.sh/v1alpha1",
        "ScaledObject",
        _strict(
            {
                "scaleTargetRef": _strict(
                    {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                    ("name",),
                ),
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"},
                "cooldownPeriod": {"type": "integer"},
                "advanced": _strict(
                    {"horizontalPodAutoscalerConfig": _strict({"name": {"type": "string"}, "behavior": {}})}
                ),
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": _strict(
                        {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": STRING_MAP,
                            "authenticationRef": _strict({"name": {"type": "string"}}, ("name",)),
                        },
                        ("type", "metadata"),
                    ),
                },
            },
            ("scaleTargetRef", "triggers"),
        ),
    ),
}


def _custom_errors(obj: dict[str, Any]) -> list[str]:
    schema = CUSTOM_SCHEMAS[obj["kind"]]
    Draft202012Validator.check_schema(schema)
    errors = Draft202012Validator(schema).iter_errors(obj)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
def test_custom_resources_use_only_their_crd_fields(kind: str) -> None:
    assert _custom_errors(OBJECTS[kind]) == []


def test_scaledobject_behavior_follows_the_kubernetes_hpa_schema() -> None:
    """KEDA hands ``advanced.horizontalPodAutoscalerConfig.behavior`` to the HPA as it is."""
    behavior = OBJECTS["ScaledObject"]["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "stream-monitor"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "stream-monitor"},
            "maxReplicas": 1,
            "behavior": behavior,
        },
    }
    assert _kubernetes_errors(hpa, OLDEST_K8S) == []


def test_the_custom_schemas_refuse_what_the_crds_refuse() -> None:
    scaled = copy.deepcopy(OBJECTS["ScaledObject"])
    scaled["spec"]["triggers"][0]["metadata"]["allowIdleConsumers"] = False  # a bool: CRD wants a string
    scaled["spec"]["maxReplicas"] = 4  # HPA's spelling, not KEDA's
    paths = {e.split(":")[0] for e in _custom_errors(scaled)}
    assert paths == {"spec", "spec/triggers/0/metadata/allowIdleConsumers"}
    rule = copy.deepcopy(OBJECTS["PrometheusRule"])
    rule["spec"]["groups"][0]["rules"][0]["for"] = "2 minutes"
    assert len(_custom_errors(rule)) == 1


# --- settings: ConfigMap and Secret -----------------------------------------------------------------------


def test_configmap_sets_only_real_settings_and_their_defaults(
    defaults: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in CONFIG:
        _settings_field(name)  # fails for a variable Settings would silently ignore
    configured = _settings_from_configmap(monkeypatch).model_dump()
    expected = defaults.model_dump()
    differing = {name for name in expected if configured[name] != expected[name]}
    assert differing == set(NOT_DEFAULT)
    assert configured["metrics_addr"] == configured["web_host"] == "0.0.0.0"


def test_secrets_come_from_the_secret_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_names = _secret_env_names()
    assert "STREAM_MONITOR_REDIS_URL" in secret_names
    # A variable beats the secret file of the same name: a secret in the ConfigMap would shadow the Secret.
    assert not secret_names & set(CONFIG)
    assert set(SECRET) <= secret_names, "every key of the Secret must be a secret setting"
    # As the kubelet mounts it: one file per key in the directory STREAM_MONITOR_SECRETS_DIR names.
    for name, value in SECRET.items():
        (tmp_path / name).write_text(value, encoding="utf-8")
    settings = _settings_from_configmap(monkeypatch, tmp_path)
    assert settings.redis_url.get_secret_value() == SECRET["STREAM_MONITOR_REDIS_URL"]


def test_the_secret_is_mounted_where_the_worker_reads_it() -> None:
    env = {e["name"]: e for e in WORKER.get("env", [])}
    secrets_dir = env["STREAM_MONITOR_SECRETS_DIR"]["value"]
    volumes = {v["name"]: v for v in POD["volumes"]}
    mount = next(m for m in WORKER["volumeMounts"] if m["mountPath"] == secrets_dir)
    assert mount.get("readOnly") is True
    assert volumes[mount["name"]]["secret"]["secretName"] == OBJECTS["Secret"]["metadata"]["name"]
    assert WORKER["envFrom"] == [{"configMapRef": {"name": OBJECTS["ConfigMap"]["metadata"]["name"]}}]
    # Nothing else sets STREAM_MONITOR_* in the pod: the ConfigMap is the one place for settings.
    assert set(env) == {"STREAM_MONITOR_SECRETS_DIR"}


# --- the worker's pod -------------------------------------------------------------------------------------


def test_the_pod_runs_the_worker_command_of_the_image() -> None:
    assert WORKER["image"] == "stream-monitor:latest"
    command = WORKER["command"]
    assert command[0] == "stream-monitor"  # [project.scripts] in pyproject.toml
    assert build_parser().parse_args(command[1:]).func.__module__ == "stream_monitor.cli.worker"


def test_the_pod_is_locked_down() -> None:
    user = re.search(r"useradd\b.*--uid (\d+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert user is not None, "the Dockerfile no longer creates its user with a fixed uid"
    uid = int(user[1])
    pod_context, context = POD["securityContext"], WORKER["securityContext"]
    assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] == uid
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert POD["automountServiceAccountToken"] is False
    # The one directory the worker writes: Faust's data directory, made with tempfile under /tmp.
    volumes = {v["name"]: v for v in POD["volumes"]}
    tmp = next(m for m in WORKER["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly", False)
    assert "TMPDIR" not in {e["name"] for e in WORKER.get("env", [])}


def test_resources_are_requested_and_limited() -> None:
    resources = WORKER["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], kind
    units = {"Mi": 2**20, "Gi": 2**30}
    memory = {
        k: int(v[:-2]) * units[v[-2:]]
        for k, v in (("requests", resources["requests"]["memory"]), ("limits", resources["limits"]["memory"]))
    }
    assert memory["requests"] <= memory["limits"]
    assert float(resources["requests"]["cpu"]) <= float(resources["limits"]["cpu"])


def test_probes_ask_the_worker_on_ports_and_paths_it_serves(defaults: Settings) -> None:
    ports = {p["name"]: p["containerPort"] for p in WORKER["ports"]}
    # The container ports are the ones the worker listens on with the ConfigMap's settings (= defaults).
    assert ports == {"metrics": defaults.metrics_port, "http": defaults.web_port}
    assert int(CONFIG["STREAM_MONITOR_WEB_PORT"]) == ports["http"]
    assert int(CONFIG["STREAM_MONITOR_METRICS_PORT"]) == ports["metrics"]
    routes = _worker_routes()
    probes = {name: WORKER[name] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    for name, probe in probes.items():
        get = probe["httpGet"]
        assert get["port"] == "http", f"{name}: Faust's web server, where /livez and /readyz are"
        assert _served(get["path"], routes), f"{name}: the worker serves no {get['path']}"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # /readyz bounds its own wait for the store below the probe's timeout, so it answers 503, not nothing.
    assert probes["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT_S
    assert not _served("/nowhere", routes)


def test_rollouts_keep_every_worker_until_its_successor_is_ready() -> None:
    strategy = DEPLOYMENT["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0
    # The autoscaler owns the replica count; a count here would be re-applied over it.
    assert "replicas" not in DEPLOYMENT["spec"]
    assert (
        DEPLOYMENT["spec"]["selector"]["matchLabels"].items()
        <= DEPLOYMENT["spec"]["template"]["metadata"]["labels"].items()
    )
    assert POD["terminationGracePeriodSeconds"] >= 30


# --- scaling and disruptions ------------------------------------------------------------------------------


def test_keda_scales_on_the_worker_group_lag_up_to_the_partition_count(defaults: Settings) -> None:
    spec = OBJECTS["ScaledObject"]["spec"]
    assert spec["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    assert spec["scaleTargetRef"]["envSourceContainerName"] == WORKER["name"]
    assert (
        spec["maxReplicaCount"] == defaults.topic_partitions == int(CONFIG["STREAM_MONITOR_TOPIC_PARTITIONS"])
    )
    assert spec["minReplicaCount"] == 1  # windows close on a worker's timer: never scale to zero
    topics = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        # KEDA reads these from the worker container's environment: the ConfigMap's values.
        assert CONFIG[meta["bootstrapServersFromEnv"]] and meta["bootstrapServersFromEnv"].endswith(
            "KAFKA_BOOTSTRAP"
        )
        assert CONFIG[meta["consumerGroupFromEnv"]] == defaults.app_id
        assert _settings_field(meta["consumerGroupFromEnv"]) == ("app_id",)
        field = _settings_field(meta["topicFromEnv"])
        assert field[0] == "topics"
        assert CONFIG[meta["topicFromEnv"]] == getattr(defaults.topics, field[1])
        topics.add(field[1])
        assert meta["offsetResetPolicy"] == "earliest"  # the worker's consumer_auto_offset_reset
        assert meta["allowIdleConsumers"] == "false"
        assert int(meta["lagThreshold"]) > 0
    assert topics == set(INPUT_TOPICS)


def test_disruptions_take_one_worker_at_a_time() -> None:
    pdb = OBJECTS["PodDisruptionBudget"]["spec"]
    assert pdb["selector"] == DEPLOYMENT["spec"]["selector"]
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    assert pdb["maxUnavailable"] < OBJECTS["ScaledObject"]["spec"]["maxReplicaCount"]
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# --- Service and the Prometheus Operator -----------------------------------------------------------------


def test_the_service_exposes_the_worker_ports() -> None:
    service = OBJECTS["Service"]
    assert service["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]["matchLabels"]
    container_ports = {p["name"] for p in WORKER["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == container_ports


def test_the_servicemonitor_scrapes_the_job_the_rules_expect() -> None:
    monitor, service = OBJECTS["ServiceMonitor"]["spec"], OBJECTS["Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    endpoint_ports = {e["port"] for e in monitor["endpoints"]}
    assert endpoint_ports == {"metrics"} <= {p["name"] for p in service["spec"]["ports"]}
    assert {e["path"] for e in monitor["endpoints"]} == {"/metrics"}
    # The operator names the job after the Service label jobLabel names (else after the Service, which an
    # overlay's namePrefix would change): the job the Compose Prometheus has, and any the rules select.
    job = service["metadata"]["labels"][monitor["jobLabel"]]
    compose_jobs = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text(encoding="utf-8"))
    assert job in {c["job_name"] for c in compose_jobs["scrape_configs"]}
    rules_text = "".join(p.read_text(encoding="utf-8") for p in sorted(RULES_DIR.glob("*.yml")))
    assert set(re.findall(r'\bjob="([^"]+)"', rules_text)) <= {job}


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("k8s_rules", ROOT / "scripts" / "k8s_rules.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheusrule_carries_exactly_the_shipped_rule_groups() -> None:
    shipped = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        shipped += yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    assert shipped, "no rule groups found"
    carried = OBJECTS["PrometheusRule"]["spec"]["groups"]
    assert [g["name"] for g in carried] == [g["name"] for g in shipped], "run scripts/k8s_rules.py"
    assert carried == shipped, "deploy/kubernetes/prometheusrule.yaml is stale: run scripts/k8s_rules.py"
    assert (K8S / "prometheusrule.yaml").read_text(encoding="utf-8") == _generator().render(RULES_DIR)


def test_the_generator_refuses_a_group_name_used_twice(tmp_path: Path) -> None:
    group = {"name": "twice", "rules": [{"record": "a:b", "expr": "vector(1)"}]}
    for name in ("a.yml", "b.yml"):
        (tmp_path / name).write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    with pytest.raises(ValueError, match="twice"):
        _generator().rule_groups(tmp_path)
