"""Deployment files (deploy/): Kubernetes manifests, Prometheus rules, the Grafana dashboard.

The manifests are checked offline against the Kubernetes OpenAPI schemas the
``kubernetes-validate`` package ships, then against what the service itself needs (probes,
uid, drain time, a products file that loads with the Secret's values). The alerting rules go
through ``promtool`` (Debian's ``prometheus`` package). A missing tool skips those tests, or
fails them when BRIDGE_REQUIRE_REDIS=1 (CI: every tool must be there).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from app import metrics
from app.products import SECRET_KEYS, ProductsFileError, parse_products
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "chatbot-bridge.json"

IMAGE_UID = 10001
# The oldest Kubernetes the manifests claim to support (deploy/kubernetes/README.md).
OLDEST_KUBERNETES = "1.25.0"
# Labels a scrape adds to every series; `le` is a histogram bucket's bound.
SCRAPE_LABELS = frozenset({"job", "instance"})
# Series Prometheus itself creates for each target.
PROMETHEUS_SERIES = frozenset({"up"})
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
# What the dashboard must show (one panel or more each).
DASHBOARD_SERIES = frozenset(
    {
        "bridge_actions_received_total",
        "bridge_actions_duplicate_total",
        "bridge_actions_dropped_total",
        "bridge_batches_rejected_total",
        "bridge_webhooks_total",
        "bridge_notes_posted_total",
        "bridge_note_failures_total",
        "bridge_note_delivery_seconds_bucket",
        "bridge_due_sessions",
        "bridge_dead_letters",
        "bridge_http_request_duration_seconds_count",
        "bridge_http_request_duration_seconds_bucket",
    }
)


# --- helpers ---------------------------------------------------------------------------------


def missing_tool(message: str) -> None:
    """Skip, or fail when the environment requires every tool (CI)."""
    if os.environ.get("BRIDGE_REQUIRE_REDIS") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def exported_series() -> dict[str, frozenset[str]]:
    """Every sample name app.metrics exposes, with the labels it carries."""
    series: dict[str, frozenset[str]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        labels = frozenset(collector._labelnames)
        for family in collector.describe():
            for suffix in SAMPLE_SUFFIXES[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                series[family.name + suffix] = labels | extra
    return series


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions and label names left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)  # by (...), on (...): label names
    text = re.sub(r"\boffset\s+\w+", "", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


def label_names(expr: str) -> dict[str, set[str]]:
    """Label names per use: matcher labels of each selector, and grouping clause labels."""
    text = _STRING.sub('""', expr)
    uses: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(text):
        uses.setdefault(name, set()).update(_MATCHER_LABEL.findall(matchers))
    for clause in _GROUPING.findall(text):
        uses.setdefault("(grouping)", set()).update(
            part.strip() for part in clause.split(",") if part.strip()
        )
    return uses


def check_expression(expr: str, known: dict[str, frozenset[str]]) -> list[str]:
    """What is wrong with ``expr``: unknown series, or labels they do not have."""
    problems = []
    names = metric_names(expr)
    for name in sorted(names - set(known) - PROMETHEUS_SERIES):
        problems.append(f"{name} is not a series of app/metrics.py: {expr!r}")
    labels_of = {name: known.get(name, frozenset()) | SCRAPE_LABELS for name in names}
    for name, used in label_names(expr).items():
        allowed = (
            set().union(*labels_of.values()) | {"le"}
            if name == "(grouping)"
            else labels_of.get(name, SCRAPE_LABELS)
        )
        for label in sorted(used - allowed):
            problems.append(f"label {label!r} does not exist on {name}: {expr!r}")
    return problems


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (cpu "500m", memory "256Mi") as a plain number."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?", text)
    assert match, f"unparsable quantity {value!r}"
    return float(match.group(1)) * units.get(match.group(2) or "", 1)


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing_tool("promtool is not on PATH (Debian: apt-get install prometheus)")
    assert promtool is not None
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubernetes_validate() -> ModuleType:
    try:
        import kubernetes_validate
    except ImportError:
        missing_tool("kubernetes-validate is not installed (pip install -e '.[test]')")
    return kubernetes_validate


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(KUBERNETES / "kustomization.yaml")
    return loaded


@pytest.fixture(scope="module")
def documents(kustomization: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every object of every file the kustomization lists."""
    loaded = []
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((KUBERNETES / name).read_text(encoding="utf-8")):
            if document is not None:
                loaded.append((name, document))
    return loaded


@pytest.fixture(scope="module")
def objects(documents: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    by_kind: dict[str, dict[str, Any]] = {}
    for name, document in documents:
        assert document["kind"] not in by_kind, f"{name}: a second {document['kind']}"
        by_kind[document["kind"]] = document
    return by_kind


@pytest.fixture(scope="module")
def pod(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = objects["Deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["containers"]
    assert isinstance(only, dict)
    return only


@pytest.fixture(scope="module")
def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


@pytest.fixture(scope="module")
def secret_env(objects: dict[str, dict[str, Any]]) -> dict[str, str]:
    values: dict[str, str] = objects["Secret"]["stringData"]
    return values


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return found


# --- Kubernetes: files and schemas -----------------------------------------------------------


def test_the_kustomization_lists_every_manifest_once(kustomization: dict[str, Any]) -> None:
    resources = kustomization["resources"]
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert len(resources) == len(set(resources))
    assert set(resources) == on_disk


def test_the_manifests_define_the_expected_objects(
    objects: dict[str, dict[str, Any]],
) -> None:
    assert set(objects) == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert objects["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"
    assert objects["PodDisruptionBudget"]["apiVersion"] == "policy/v1"


@pytest.mark.parametrize("version", ["oldest", "latest"])
def test_every_manifest_matches_the_kubernetes_schema(
    kubernetes_validate: ModuleType, documents: list[tuple[str, dict[str, Any]]], version: str
) -> None:
    # Strict: a misspelt or misplaced key is an error, not silently dropped by the API server.
    wanted = OLDEST_KUBERNETES if version == "oldest" else kubernetes_validate.latest_version()
    for name, document in documents:
        try:
            kubernetes_validate.validate(document, wanted, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} ({document['kind']}) against Kubernetes {wanted}: {exc}")


def test_schema_validation_rejects_a_misplaced_key(
    kubernetes_validate: ModuleType, objects: dict[str, dict[str, Any]]
) -> None:
    broken = json.loads(json.dumps(objects["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["path"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


# --- Kubernetes: what the service needs ------------------------------------------------------


def test_probes_hit_healthz_and_readyz_on_the_service_port(
    container: dict[str, Any], container_env: dict[str, str]
) -> None:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "http": int(container_env.get("BRIDGE_PORT", Settings.model_fields["port"].default))
    }
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path, probe
        assert ports.get(http_get["port"], http_get["port"]) == ports["http"], probe


def test_the_pod_runs_as_the_images_non_root_uid(
    pod: dict[str, Any], container: dict[str, Any]
) -> None:
    effective = {**pod["securityContext"], **container["securityContext"]}
    assert effective["runAsNonRoot"] is True
    assert effective["runAsUser"] == IMAGE_UID
    assert effective["readOnlyRootFilesystem"] is True
    assert effective["allowPrivilegeEscalation"] is False
    assert effective.get("privileged", False) is False
    assert effective["capabilities"]["drop"] == ["ALL"]
    assert not effective["capabilities"].get("add")
    # The image's own USER: a mismatch would make runAsNonRoot's check pass on the wrong uid.
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users[-1:] == [str(IMAGE_UID)]


def test_the_termination_grace_period_outlasts_the_drain(
    pod: dict[str, Any], container: dict[str, Any], container_env: dict[str, str]
) -> None:
    default = Settings.model_fields["shutdown_grace_s"].default
    drain_s = float(container_env.get("BRIDGE_SHUTDOWN_GRACE_S", default))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    command = pre_stop.get("command", [])
    pre_stop_s = float(command[1]) if command[:1] == ["sleep"] else 0.0
    # The kubelet's clock starts before preStop: SIGTERM comes after it, then the drain.
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_s


def test_the_settings_accept_the_deployments_environment(
    monkeypatch: pytest.MonkeyPatch, container_env: dict[str, str], secret_env: dict[str, str]
) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    for name, value in {**secret_env, **container_env}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.redis_url is not None
    assert urlparse(settings.redis_url).hostname == "redis"
    assert settings.port == 8000


def test_the_products_file_comes_from_the_configmap(
    objects: dict[str, dict[str, Any]],
    pod: dict[str, Any],
    container: dict[str, Any],
    container_env: dict[str, str],
) -> None:
    products_file = Path(container_env["BRIDGE_PRODUCTS_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/srv/config"]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = objects["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert products_file.parent == Path(mount["mountPath"])
    assert products_file.name in configmap["data"]


def test_the_products_file_loads_with_the_secrets_values(
    objects: dict[str, dict[str, Any]], container_env: dict[str, str], secret_env: dict[str, str]
) -> None:
    name = Path(container_env["BRIDGE_PRODUCTS_FILE"]).name
    raw = tomllib.loads(objects["ConfigMap"]["data"][name])
    products = parse_products(raw, {**secret_env, **container_env})
    assert products
    assert not any(product.allow_unauthenticated for product in products.values())
    with pytest.raises(ProductsFileError, match="environment variable"):
        parse_products(raw, {})


def test_no_secret_is_written_into_the_configmap(objects: dict[str, dict[str, Any]]) -> None:
    def literal_secrets(node: Any, path: str) -> list[str]:
        if isinstance(node, dict):
            found = []
            for key, value in node.items():
                if key in SECRET_KEYS and not re.fullmatch(r"\$\{\w+\}", str(value)):
                    found.append(f"{path}.{key}")
                found += literal_secrets(value, f"{path}.{key}")
            return found
        return []

    for key, text in objects["ConfigMap"]["data"].items():
        assert literal_secrets(tomllib.loads(text), key) == []


def test_the_secret_holds_only_marked_placeholders(
    objects: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    secret = objects["Secret"]
    assert "data" not in secret  # base64 would hide what the values are
    for key, value in secret["stringData"].items():
        assert re.search(r"change-?me", value, re.IGNORECASE), f"{key} is not marked CHANGE ME"
        assert len(value) >= 16, key
    sources = [source["secretRef"]["name"] for source in container["envFrom"]]
    assert sources == [secret["metadata"]["name"]]


def test_service_autoscaler_and_budget_select_the_deployments_pods(
    objects: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["port"] == 8000
    assert container_ports.get(port["targetPort"], port["targetPort"]) == 8000

    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert [m["resource"]["name"] for m in hpa["metrics"] if m["type"] == "Resource"] == ["cpu"]
    assert hpa["minReplicas"] == deployment["spec"]["replicas"] == 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]

    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    # With minAvailable below the replica count a node drain can evict one pod at a time.
    assert pdb["minAvailable"] < hpa["minReplicas"]


def test_resources_fit_one_single_process_pod(container: dict[str, Any]) -> None:
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        request = quantity(resources["requests"][kind])
        limit = quantity(resources["limits"][kind])
        assert 0 < request <= limit, kind
    # One uvicorn worker cannot use more than about one core.
    assert quantity(resources["limits"]["cpu"]) <= 1


def test_prometheus_scrapes_the_metrics_endpoint(
    objects: dict[str, dict[str, Any]], container: dict[str, Any]
) -> None:
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]


# --- Prometheus rules ------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    result = run_promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet(alert_rules: list[dict[str, Any]]) -> None:
    cases = [case for test in load_yaml(ALERT_TESTS)["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules:
        name = rule["alert"]
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == name}
        assert outcomes == {True, False}, f"{name}: needs a firing and a quiet case"


def test_every_alert_has_a_severity_and_a_description(alert_rules: list[dict[str, Any]]) -> None:
    assert alert_rules
    for rule in alert_rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_the_metric_name_parser_finds_series_and_leaves_out_the_rest() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{route="/x", b=~"c"}[5m]))) > 1e3'
        " and on (product) b_total offset 5m unless absent(up{job='j'} == 1)"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "up"}
    assert label_names(expr) == {
        "a_bucket": {"route", "b"},
        "up": {"job"},
        "(grouping)": {"le", "product"},
    }
    known = {"a_bucket": frozenset({"route", "le"}), "b_total": frozenset({"product"})}
    assert check_expression(expr, known) == [f"label 'b' does not exist on a_bucket: {expr!r}"]


def test_the_rules_use_only_series_and_labels_the_service_exports(
    alert_rules: list[dict[str, Any]],
) -> None:
    known = exported_series()
    used = set()
    problems = []
    for rule in alert_rules:
        used |= metric_names(rule["expr"])
        problems += check_expression(rule["expr"], known)
    # The unit tests must feed the rules real series names too.
    for test in load_yaml(ALERT_TESTS)["tests"]:
        for series in test["input_series"]:
            problems += check_expression(series["series"], known)
    assert problems == []
    assert {
        "bridge_actions_received_total",
        "bridge_notes_posted_total",
        "bridge_note_delivery_seconds_bucket",
        "bridge_dead_letters",
        "bridge_http_request_duration_seconds_count",
        "up",
    } <= used


# --- Grafana dashboard -----------------------------------------------------------------------


def test_the_dashboard_takes_its_datasource_as_an_input(dashboard: dict[str, Any]) -> None:
    inputs = {item["name"]: item for item in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    expected = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in panels_of(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == expected, variable["name"]


def test_the_dashboard_layout_is_well_formed(dashboard: dict[str, Any]) -> None:
    panels = panels_of(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "chatbot-bridge"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_the_dashboard_uses_only_series_labels_and_variables_that_exist(
    dashboard: dict[str, Any],
) -> None:
    known = exported_series()
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    used: set[str] = set()
    problems = []
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            used |= metric_names(expr)
            problems += check_expression(expr, known)
            for variable in re.findall(r"\$\{?(\w+)", expr):
                if not variable.startswith("__") and variable not in variables:
                    problems.append(f"{panel['title']}: ${variable} is not a dashboard variable")
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable["name"]
        series, label = match.groups()
        assert label in known.get(series, frozenset()), variable["query"]
    assert problems == []
    assert used >= DASHBOARD_SERIES


def test_the_deployment_names_the_package_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    text = (KUBERNETES / "deployment.yaml").read_text(encoding="utf-8")
    assert f"image: chatbot-bridge:{project['version']}" in text
