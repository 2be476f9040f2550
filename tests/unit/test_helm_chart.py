"""The Helm chart (helm/mssante-connector), checked without helm where helm is not installed.

Without helm: Chart.yaml and values.yaml parse; templates have balanced `{{ }}` and balanced
if/range/with/define ... end blocks; every `.Values.x.y` a template reads exists in values.yaml
and every `include` names a defined template; values.schema.json describes every value and
refuses unknown keys; values.yaml and the example values files (merged over the defaults, as helm
does) pass check-jsonschema, and invalid values are refused; the TOML template writes keys the
connector knows, mapped from the values keys of the same name; the Grafana dashboard uses only
the connector's metric names and labels. With helm on PATH (or $HELM), `helm lint` and
`helm template` run as well.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_dockerfile import CHART_DEFAULT_TOML, UID

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "mssante-connector"
TEMPLATES = CHART / "templates"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
DASHBOARD = CHART / "dashboards" / "mssante-connector.json"
EXAMPLES = sorted((CHART / "examples").glob("values-*.yaml"))
CHECK_JSONSCHEMA = ROOT / ".venv" / "bin" / "check-jsonschema"

#: The connector's metric names the dashboard may use, with their labels.
METRICS: dict[str, set[str]] = {
    "mssconnector_mllp_messages_total": {"tenant", "type", "ack"},
    "mssconnector_mllp_frames_refused_total": {"tenant", "reason"},
    "mssconnector_mllp_ack_seconds_bucket": {"tenant", "le"},
    "mssconnector_cisis_documents_without_pdf_total": {"tenant"},
    "mssconnector_outbox_items": {"tenant", "state", "kind"},
    "mssconnector_outbox_oldest_pending_seconds": {"tenant", "kind"},
    "mssconnector_smtp_sends_total": {"tenant", "transport", "result"},
    "mssconnector_smtp_send_seconds_bucket": {"tenant", "transport", "le"},
    "mssconnector_delivery_paused": {"tenant"},
    "mssconnector_receipts_total": {"tenant", "kind", "outcome"},
    "mssconnector_zam_sent_total": {"tenant", "type"},
    "mssconnector_zam_acknowledged_total": {"tenant", "code"},
    "mssconnector_client_certificate_expiry_days": {"tenant"},
    "mssconnector_crl_next_update_seconds": {"tenant", "use"},
    "mssconnector_whitelist_age_seconds": set(),
    "mssconnector_store_commit_seconds_bucket": {"le"},
    "mssconnector_store_commits_total": set(),
    "mssconnector_store_committed_jobs_total": set(),
    "mssconnector_store_bytes": {"part"},
    "mssconnector_store_free_bytes": set(),
    "mssconnector_store_purged_total": {"part"},
    "mssconnector_store_purge_failures_total": set(),
}
#: Metrics of the whole process, with no tenant label.
PROCESS_METRICS = ("mssconnector_whitelist_age_seconds", "mssconnector_store_")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def template_files() -> list[Path]:
    return sorted(p for p in TEMPLATES.iterdir() if p.suffix in (".yaml", ".tpl", ".txt"))


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def merged(base: Any, override: Any) -> Any:
    """Helm's merge of a values file over the chart's: maps merge, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merged(base[key], value) if key in base else value
        return out
    return copy.deepcopy(override)


# -- Chart.yaml, values.yaml --------------------------------------------------------------------


def test_chart_yaml_describes_the_application() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "mssante-connector"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["appVersion"] == project["version"]  # the image tag defaults to it


def test_values_and_examples_parse() -> None:
    values = load_yaml(VALUES)
    assert isinstance(values, dict)
    assert values["store"]["backend"] == "sqlite"
    assert values["replicaCount"] == 1
    assert len(EXAMPLES) >= 2
    for example in EXAMPLES:
        assert isinstance(load_yaml(example), dict), example


def test_the_pod_runs_as_the_image_user_on_a_read_only_root() -> None:
    values = load_yaml(VALUES)
    pod, container = values["podSecurityContext"], values["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (UID, UID, UID)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    helpers = (TEMPLATES / "_helpers.tpl").read_text(encoding="utf-8")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        assert re.search(probe + r":\s+httpGet:\s+path: " + path + r"\s+port: admin", helpers)
    assert "mountPath: /tmp" in helpers  # the emptyDir behind TMPDIR


def test_sqlite_is_a_single_pod_statefulset_and_postgres_a_deployment() -> None:
    statefulset = (TEMPLATES / "statefulset.yaml").read_text(encoding="utf-8")
    deployment = (TEMPLATES / "deployment.yaml").read_text(encoding="utf-8")
    assert '{{- if eq .Values.store.backend "sqlite" }}' in statefulset
    assert "replicas: 1\n" in statefulset
    assert "volumeClaimTemplates:" in statefulset
    assert '{{- if eq .Values.store.backend "postgres" }}' in deployment
    assert "replicas: {{ .Values.replicaCount }}" in deployment


# -- templates without helm ---------------------------------------------------------------------

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_OPENERS = {"if", "range", "with", "define", "block"}


def actions(text: str) -> list[str]:
    return [a for a in _ACTION.findall(text) if not a.startswith("/*")]


@pytest.mark.parametrize("path", template_files(), ids=lambda p: p.name)
def test_template_delimiters_and_blocks_balance(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    depth = 0
    for token in re.findall(r"\{\{|\}\}", text):
        depth += 1 if token == "{{" else -1
        assert depth in (0, 1), f"{path.name}: nested or unopened delimiters"
    assert depth == 0, f"{path.name}: unclosed {{{{"
    stack: list[str] = []
    for action in actions(text):
        word = action.split()[0] if action.split() else ""
        if word in _OPENERS:
            stack.append(action)
        elif word == "end":
            assert stack, f"{path.name}: `end` without an opening block"
            stack.pop()
    assert not stack, f"{path.name}: unclosed blocks {stack}"


def test_every_values_path_used_in_templates_exists() -> None:
    values = load_yaml(VALUES)
    used = set()
    for path in template_files():
        used |= set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)",
                               path.read_text(encoding="utf-8")))
    assert used
    missing = []
    for dotted in sorted(used):
        node: Any = values
        for key in dotted.strip(".").split("."):
            if not (isinstance(node, dict) and key in node):
                missing.append(dotted)
                break
            node = node[key]
    assert not missing, f"read by templates, absent from values.yaml: {missing}"


def test_every_included_template_is_defined() -> None:
    texts = {p.name: p.read_text(encoding="utf-8") for p in template_files()}
    defined = set()
    for text in texts.values():
        defined |= set(re.findall(r'\{\{-?\s*define "([^"]+)"', text))
    included = set()
    for text in texts.values():
        included |= set(re.findall(r'(?:include|template) "([^"]+)"', text))
    assert included
    assert included <= defined, sorted(included - defined)
    for name in defined:
        assert name.startswith("mssante-connector."), name  # no clash with a parent chart


@pytest.mark.parametrize(("template", "shipped", "marker", "switch"), [
    ("dashboard-configmap.yaml", "dashboards/mssante-connector.json", 'grafana_dashboard: "1"',
     "grafanaDashboard"),
    ("prometheusrule.yaml", "alerts/mssante-connector.rules.yaml", "kind: PrometheusRule",
     "prometheusRule"),
])
def test_optional_resources_ship_their_file(template: str, shipped: str, marker: str,
                                            switch: str) -> None:
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    assert f'.Files.Get "{shipped}"' in text
    assert marker in text
    assert f"{{{{- if .Values.{switch}.enabled }}}}" in text
    assert (CHART / shipped).is_file()
    ignored = (CHART / ".helmignore").read_text(encoding="utf-8").split()
    assert not any(p.startswith(shipped.split("/")[0]) for p in ignored)


# -- the TOML the chart renders -----------------------------------------------------------------

_TOML_HELPER = re.compile(
    r'include "mssante-connector\.toml\.(str|int|number|bool|file)" '
    r'\(list "([a-z0-9_]+)" \S+ "([A-Za-z0-9]+)"')


def test_toml_template_keys_are_connector_keys_named_after_the_values_keys() -> None:
    template = (TEMPLATES / "_config.tpl").read_text(encoding="utf-8")
    settings_source = (ROOT / "connector" / "settings.py").read_text(encoding="utf-8")
    schema_names = set(re.findall(r'"([A-Za-z0-9]+)": \{', SCHEMA.read_text(encoding="utf-8")))
    mapped = _TOML_HELPER.findall(template)
    assert len(mapped) > 40
    for kind, toml_key, values_key in mapped:
        assert toml_key == snake(values_key), (toml_key, values_key)
        if kind == "file" and toml_key.endswith("_file"):  # `<secret>_file` of _Reader.secret
            known = f'"{toml_key.removesuffix("_file")}"' in settings_source
        else:
            known = f'"{toml_key}"' in settings_source
        assert known, f"{toml_key}: not a key of connector/settings.py"
        assert values_key in schema_names, f"{values_key}: not described in values.schema.json"
    for literal in re.findall(r"^([a-z_]+) = ", template, re.M):  # keys written directly
        assert f'"{literal.removesuffix("_file")}"' in settings_source, literal


def test_the_default_rendering_matches_values_yaml() -> None:
    """CHART_DEFAULT_TOML (run by test_dockerfile) is what the template makes of values.yaml."""
    template = (TEMPLATES / "_config.tpl").read_text(encoding="utf-8")
    values = load_yaml(VALUES)
    config = tomllib.loads(CHART_DEFAULT_TOML)
    for line in CHART_DEFAULT_TOML.splitlines():
        key = line.partition(" = ")[0]
        if " = " in line:
            assert f'(list "{key}"' in template or f"\n{key} = " in template, key
        elif line.startswith("["):
            assert f"\n{line}" in template, line
    assert config["admin"] == values["config"]["admin"]
    assert config["logging"] == values["config"]["logging"]
    assert config["default_charset"] == values["config"]["defaultCharset"]
    assert config["store"]["backend"] == values["store"]["backend"]
    assert config["store"]["retransmission_window_seconds"] == values["store"][
        "retransmissionWindowSeconds"]
    assert config["store"]["payload_retention_days"] == values["store"]["payloadRetentionDays"]
    assert config["store"]["patient_context_retention_days"] == values["store"][
        "patientContextRetentionDays"]
    (tenant,) = config["tenants"]
    (wanted,) = values["tenants"]
    for section in ("delivery", "cisis", "mailbox"):
        expected = {snake(k): v for k, v in wanted[section].items() if v != ""}
        assert tenant[section] == expected, section
    (listener,) = tenant["listeners"]
    expected = {snake(k): v for k, v in wanted["listeners"][0].items()
                if v not in ("", []) and k != "tls"}
    assert listener == expected
    scalars = {snake(k): v for k, v in wanted.items()
               if isinstance(v, str) and v != ""}
    assert {k: v for k, v in tenant.items() if isinstance(v, str)} == scalars
    assert tenant["transport"] == {"kind": wanted["transport"]["kind"]}


# -- values.schema.json -------------------------------------------------------------------------


def schema() -> dict[str, Any]:
    loaded = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _undescribed(value: Any, node: dict[str, Any], path: str) -> list[str]:
    missing = []
    if isinstance(value, dict):
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                missing += _undescribed(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                missing += _undescribed(item, extra, f"{path}.{key}")
            elif node.get("type") != "object" or extra is not None or properties:
                missing.append(f"{path}.{key}")
    elif isinstance(value, list):
        items = node.get("items")
        if not isinstance(items, dict):
            return [path] if value else []
        for index, item in enumerate(value):
            missing += _undescribed(item, items, f"{path}[{index}]")
    elif "type" not in node and "enum" not in node:
        missing.append(path)
    return missing


def test_the_schema_describes_every_value() -> None:
    described = schema()
    values = load_yaml(VALUES)
    assert _undescribed(values, described, "") == []
    for example in EXAMPLES:
        assert _undescribed(merged(values, load_yaml(example)), described, example.name) == []
    assert set(described["properties"]) == set(values) | {"global"}


def _objects(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if "properties" in node and node.get("type") == "object":
            found.append((path, node))
        for key, child in node.items():
            found += _objects(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _objects(child, f"{path}[{index}]")
    return found


def test_the_schema_refuses_unknown_keys() -> None:
    objects = _objects(schema())
    assert len(objects) > 20
    for path, node in objects:
        assert node.get("additionalProperties") is False, path


def check_jsonschema(values_file: Path) -> subprocess.CompletedProcess[str]:
    if not CHECK_JSONSCHEMA.exists():
        pytest.fail(f"{CHECK_JSONSCHEMA} is missing: pip install -e '.[test]'")
    return subprocess.run([str(CHECK_JSONSCHEMA), "--schemafile", str(SCHEMA), str(values_file)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_values_yaml_validates_against_the_schema() -> None:
    result = check_jsonschema(VALUES)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_values_validate_against_the_schema(example: Path, tmp_path: Path) -> None:
    values = merged(load_yaml(VALUES), load_yaml(example))
    target = tmp_path / example.name
    target.write_text(yaml.safe_dump(values), encoding="utf-8")
    result = check_jsonschema(target)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_examples_cover_sqlite_single_replica_and_postgres_replicas() -> None:
    shapes = {(v["store"]["backend"], v.get("replicaCount", 1))
              for v in map(load_yaml, EXAMPLES)}
    assert shapes == {("sqlite", 1), ("postgres", 3)}


def _tenant(**changes: Any) -> dict[str, Any]:
    tenant = copy.deepcopy(load_yaml(VALUES)["tenants"][0])
    tenant.update(changes)
    return tenant


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "sqlite with 3 replicas": ({"replicaCount": 3}, "replicaCount"),
    "replicaCount not an integer": ({"replicaCount": "three"}, "replicaCount"),
    "unknown top-level key": ({"replicas": 2}, "replicas"),
    "unknown store backend": ({"store": {"backend": "mysql"}}, "backend"),
    "postgres without a DSN": ({"store": {"backend": "postgres"}, "replicaCount": 3},
                               "postgres"),
    "encryption without keys": ({"store": {"encryption": {"enabled": True}}}, "encryption"),
    "tenant id in capitals": ({"tenants": [_tenant(id="CHU-X")]}, "id"),
    "tenant without oid": ({"tenants": [{k: v for k, v in _tenant().items() if k != "oid"}]},
                           "oid"),
    "FINESS not quoted": ({"tenants": [_tenant(finess=120456789)]}, "finess"),
    "port out of range": ({"tenants": [_tenant(listeners=[{"port": 70000}])]}, "port"),
    "smtp without host": ({"tenants": [_tenant(transport={
        "kind": "smtp", "smtp": _tenant()["transport"]["smtp"]})]}, "host"),
    "TLS without a certificate": (
        {"tenants": [_tenant(listeners=[{"port": 2575, "tls": {"enabled": True}}])]},
        "certificate"),
    "admin port as text": ({"config": {"admin": {"port": "9610"}}}, "port"),
    "no tenant": ({"tenants": []}, "tenants"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_values_are_refused(case: str, tmp_path: Path) -> None:
    override, word = INVALID[case]
    target = tmp_path / "values.yaml"
    target.write_text(yaml.safe_dump(merged(load_yaml(VALUES), override)), encoding="utf-8")
    result = check_jsonschema(target)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Schema validation errors" in result.stdout
    assert word in result.stdout


# -- the Grafana dashboard ----------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        for child in node.values():
            found += expressions(child)
        return found
    if isinstance(node, list):
        return [e for child in node for e in expressions(child)]
    return []


def test_dashboard_queries_use_only_the_connector_metrics() -> None:
    board = dashboard()
    exprs = expressions(board["panels"])
    assert len(exprs) >= 12
    used: set[str] = set()
    for expr in exprs:
        names, _ = checked_expression(expr, METRICS)
        used |= names
    assert used == set(METRICS)  # every metric has a panel


def checked_expression(expr: str, known: dict[str, set[str]]) -> tuple[set[str], set[str]]:
    """The metric names `expr` uses and all their labels, once checked that every name, label
    matcher and grouping is one of `known` (metric name -> its labels)."""
    names = set(re.findall(r"\bmssconnector_[a-z0-9_]+", expr))
    assert names, expr
    assert names <= set(known), (expr, names - set(known))
    labels = set().union(*(known[n] for n in names))
    for name, selector in re.findall(r"\b(mssconnector_[a-z0-9_]+)\{([^}]*)\}", expr):
        matchers = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector))
        assert matchers <= known[name], (expr, matchers - known[name])
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        grouped = {g.strip() for g in grouping.split(",") if g.strip()}
        assert grouped <= labels, (expr, grouped - labels)
    return names, labels


def test_dashboard_has_a_tenant_variable_used_by_every_tenant_metric() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    tenant = variables["tenant"]
    assert tenant["type"] == "query"
    assert "label_values(mssconnector_mllp_messages_total, tenant)" in json.dumps(tenant)
    assert tenant["multi"] is True
    assert tenant["includeAll"] is True
    assert variables["datasource"]["type"] == "datasource"
    for expr in expressions(board["panels"]):
        if not any(name in expr for name in PROCESS_METRICS):
            assert 'tenant=~"$tenant"' in expr, expr
    assert board["uid"] == "mssante-connector"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


# -- with helm, where it is installed ----------------------------------------------------------


def helm() -> str:
    found = os.environ.get("HELM") or shutil.which("helm")
    if not found:
        pytest.skip("helm is not installed: templates are checked without rendering")
    return found


def render(values_files: list[Path]) -> list[dict[str, Any]]:
    args = [helm(), "template", "test", str(CHART)]
    for values_file in values_files:
        args += ["--values", str(values_file)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("values_files", [[], *[[e] for e in EXAMPLES]],
                         ids=["defaults", *[e.stem for e in EXAMPLES]])
def test_helm_lint_and_template(values_files: list[Path]) -> None:
    args = [helm(), "lint", "--strict", str(CHART)]
    for values_file in values_files:
        args += ["--values", str(values_file)]
    lint = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(values_files)
    kinds = {doc["kind"] for doc in docs}
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and "connector.toml" in d["data"]]
    tomllib.loads(config_map["data"]["connector.toml"])
    if not values_files:
        assert config_map["data"]["connector.toml"] == CHART_DEFAULT_TOML
        assert "StatefulSet" in kinds
        assert "Deployment" not in kinds


def test_helm_refuses_sqlite_with_replicas() -> None:
    result = subprocess.run([helm(), "template", "test", str(CHART), "--set", "replicaCount=3"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "replicaCount" in result.stderr


# -- the alerting rules ----------------------------------------------------------------------

RULES = CHART / "alerts" / "mssante-connector.rules.yaml"


def exported_metrics() -> dict[str, set[str]]:
    """Every sample name the connector exports, with its labels: a ConnectorMetrics with one
    child per labelled metric, and the store's collector, read back from the registry."""
    from prometheus_client.metrics import MetricWrapperBase

    from connector.observability.metrics import ConnectorMetrics
    from connector.store import CommitStats

    metrics = ConnectorMetrics()
    metrics.watch_store(CommitStats)
    metrics.set_store_free_bytes(0)  # exported once a SQLite store sets it
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))
    found: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def test_alert_rules_use_only_the_connector_metrics() -> None:
    known = exported_metrics()
    assert "mssconnector_store_free_bytes" in known  # the helper sees gauges and collectors
    rules = [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]
    assert len(rules) >= 8
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"MSSConnector[A-Za-z]+", rule["alert"]), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"], rule
        assert rule["annotations"]["description"], rule
        _, labels = checked_expression(rule["expr"], known)
        # only the labels the expression keeps may appear in the texts
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.([a-z_]+)", text):
                assert label in labels, (rule["alert"], label)


def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs "
                    "it): the rules are checked without Prometheus")
    return found


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_CASES)} rules found" in result.stdout


#: (alert, input series {series: values}, minutes at which it must not fire yet, minutes at
#: which it fires, its labels). Values use promtool's expanding notation: 'a+bxN'.
ALERT_CASES = [
    ("MSSConnectorStoreDiskLow", {"mssconnector_store_free_bytes": "1000000000x40"},
     5, 15, {"severity": "critical"}),
    ("MSSConnectorStoreCommitsSlow",
     {'mssconnector_store_commit_seconds_bucket{le="0.1"}': "0+1x40",
      'mssconnector_store_commit_seconds_bucket{le="0.25"}': "0+100x40",
      'mssconnector_store_commit_seconds_bucket{le="+Inf"}': "0+100x40"},
     10, 25, {"severity": "warning"}),
    ("MSSConnectorMessagesRefused",
     {'mssconnector_mllp_messages_total{tenant="chu-a",type="other",ack="AR"}': "0+5x40",
      'mssconnector_mllp_messages_total{tenant="chu-b",type="other",ack="AA"}': "0+5x40"},
     8, 20, {"severity": "warning", "tenant": "chu-a"}),
    ("MSSConnectorFramesTooLarge",
     {'mssconnector_mllp_frames_refused_total{tenant="chu-a",reason="too_large"}': "0x10 1x30",
      'mssconnector_mllp_frames_refused_total{tenant="chu-b",reason="truncated"}': "0x10 1x30"},
     5, 15, {"severity": "warning", "tenant": "chu-a"}),
    ("MSSConnectorDeliveryPaused",
     {'mssconnector_delivery_paused{tenant="chu-a"}': "0 0 1x40",
      'mssconnector_delivery_paused{tenant="chu-b"}': "0x40"},
     10, 20, {"severity": "critical", "tenant": "chu-a"}),
    ("MSSConnectorOutboxBacklog",
     {'mssconnector_outbox_oldest_pending_seconds{tenant="chu-a",kind="smtp"}': "4000x40"},
     10, 20, {"severity": "warning", "tenant": "chu-a", "kind": "smtp"}),
    ("MSSConnectorDeliveryRefused",
     {'mssconnector_delivery_refused_total{tenant="chu-a",transport="smtp"}': "0x10 1x30"},
     5, 15, {"severity": "warning", "tenant": "chu-a"}),
    ("MSSConnectorDocumentsWithoutPdf",
     {'mssconnector_cisis_documents_without_pdf_total{tenant="chu-a"}': "0x10 1x30",
      'mssconnector_cisis_documents_without_pdf_total{tenant="chu-b"}': "0x40"},
     5, 15, {"severity": "warning", "tenant": "chu-a"}),
    ("MSSConnectorCertificateExpiresSoon",
     {'mssconnector_client_certificate_expiry_days{tenant="chu-a",use="smtp"}': "40 40 20x40"},
     1, 3, {"severity": "warning", "tenant": "chu-a", "use": "smtp"}),
    ("MSSConnectorCrlExpiresSoon",
     {'mssconnector_crl_next_update_seconds{tenant="chu-a",use="smtp"}': "90000-1800x60",
      'mssconnector_crl_next_update_seconds{tenant="chu-b",use="smtp"}': "600000x60"},
     20, 40, {"severity": "warning", "tenant": "chu-a", "use": "smtp"}),
    ("MSSConnectorCrlExpired",
     {'mssconnector_crl_next_update_seconds{tenant="chu-a",use="imap"}': "3600-600x60"},
     4, 8, {"severity": "critical", "tenant": "chu-a", "use": "imap"}),
    ("MSSConnectorWhitelistStale", {"mssconnector_whitelist_age_seconds": "800000x90"},
     30, 70, {"severity": "warning"}),
    ("MSSConnectorMailboxDisconnected",
     {'mssconnector_receipts_mailbox_connected{tenant="chu-a"}': "1 1 0x40"},
     10, 20, {"severity": "warning", "tenant": "chu-a"}),
    ("MSSConnectorRetentionPurgeFailing",
     {"mssconnector_store_purge_failures_total": "0x60 1x60 2x60"},
     90, 130, {"severity": "warning"}),
]


def test_each_alert_fires_when_it_should(tmp_path: Path) -> None:
    """promtool's rule unit tests, on a copy of the rules without their annotations (promtool
    compares those too; `test_alert_rules_use_only_the_connector_metrics` covers them)."""
    tool = promtool()
    rules = load_yaml(RULES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    assert {case[0] for case in ALERT_CASES} == {
        rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    tests = [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {"eval_time": f"{quiet}m", "alertname": alert, "exp_alerts": []},
            {"eval_time": f"{fires}m", "alertname": alert,
             "exp_alerts": [{"exp_labels": labels}]},
        ],
    } for alert, series, quiet, fires, labels in ALERT_CASES]
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = subprocess.run([tool, "test", "rules", "tests.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
