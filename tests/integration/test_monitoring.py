"""Monitoring, run for real: Prometheus scrapes a loaded service, and every dashboard
query and alert expression returns data through Prometheus's own query API.

``tests/unit/test_deploy_configs.py`` checks the metric names of the dashboard and the
alerts by regex; here Debian's ``prometheus`` parses and evaluates them. The scrape
config is ``deploy/prometheus/prometheus.yml`` itself with only what a test must
change: the ``mfdv`` job's target is a real ``python -m service`` on a tiny checkpoint
(its ``variant: cpu`` label kept), scrapes and rule evaluations every second, the rule
files from ``deploy/prometheus/`` (so Prometheus loads and evaluates the real
alerts), and no other targets.

The load runs twice, with a scrape in between, so that every counter and histogram
series grows inside the query windows and rates are not zero: predictions (v1 and
v2, concurrent so batches form), bad requests (422, 404) so error series exist, attack
probes so attack metrics exist, and probes refused by the busy attack pool so a 5xx
series exists for the error-rate alert and panel.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.prometheus import PROMETHEUS, PrometheusError, PrometheusProcess
from tests.support.server import ServerProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (scripts/install apt-installs it)"),
]

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG_MOUNT = "/etc/prometheus/"  # where compose mounts deploy/prometheus
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "mfdv.json"
SIZE = 14  # the tiny checkpoint's 1x14x14 input
# What `$__rate_interval` and `$__range` become. The TSDB is fresh, so any window longer
# than the test covers exactly its samples, as a dashboard over the last 10 minutes would.
WINDOW = "10m"
SLOW_PROBE = {"name": "pgd", "eps": 0.1, "steps": 500, "eot": 64}  # ~0.5 s on the tiny model
FAST_PROBE = {"name": "fgsm", "eps": 0.1}


# ---------------------------------------------------------------------------
# the stack: service, load, Prometheus
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[ServerProcess]:
    # One attack worker and no waiting room: a probe sent while another runs gets 503.
    env = {"MFDV_ATTACK_WORKERS": "1", "MFDV_ATTACK_QUEUE_SIZE": "0", "MFDV_MAX_WAIT_MS": "20"}
    env["MFDV_MAX_QUEUE_DELAY_MS"] = "0"  # concurrent predictions must all be served, however slow this machine is
    with ServerProcess(tiny_checkpoint, env=env, args=["--device", "cpu"]) as s:
        yield s


def image(value: float) -> list[list[float]]:
    return [[value] * SIZE for _ in range(SIZE)]


def probe(client: httpx.Client, attack: dict[str, Any]) -> httpx.Response:
    body = {"inputs": [image(0.3), image(0.7)], "attacks": [attack], "judge_samples": 8, "seed": 0}
    return client.post("/v1/attack-probe", json=body)


def refused_probe(client: httpx.Client, attempts: int = 3) -> None:
    """Send fast probes while a slow one holds the only attack worker, until one of them is refused (503)."""
    statuses: list[int] = []
    for _ in range(attempts):
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(probe, client, SLOW_PROBE)
            while not slow.done() and 503 not in statuses:
                statuses.append(probe(client, FAST_PROBE).status_code)
            statuses.append(slow.result().status_code)
        if 503 in statuses:
            return
    pytest.fail(f"no probe was refused with 503 while another ran (statuses {statuses})")


def drive_load(server: ServerProcess) -> None:
    """One round of traffic touching every metric the dashboard and the alerts query."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        bodies = [{"inputs": [image(i / 12)], "samples": 4 + 4 * (i % 3), "seed": i} for i in range(12)]
        with ThreadPoolExecutor(6) as pool:  # concurrent, so the batcher forms batches
            statuses = list(pool.map(lambda b: client.post("/v1/predict", json=b).status_code, bodies))
        assert statuses == [200] * len(bodies)
        v2 = {
            "inputs": [{"name": "image", "shape": [1, SIZE, SIZE], "datatype": "FP32", "data": [0.4] * SIZE * SIZE}],
            "parameters": {"samples": 8, "seed": 0},
        }
        r = client.post("/v2/models/tiny_mfdv/infer", json=v2)
        assert r.status_code == 200, r.text
        # 4xx: a bad setting (400), an unknown model (404), an unknown path (404, route "unmatched").
        assert client.post("/v1/predict", json={"inputs": [image(0.5)], "samples": 0}).status_code == 400
        assert client.post("/v2/models/nope/infer", json=v2).status_code == 404
        assert client.get("/no/such/path").status_code == 404
        r = probe(client, FAST_PROBE)
        assert r.status_code == 200, r.text
        refused_probe(client)


def scrape_config(service: ServerProcess) -> dict[str, Any]:
    """``deploy/prometheus/prometheus.yml``, pointed at ``service`` (see the module docstring)."""
    config = copy.deepcopy(yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text()))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    rule_files = []
    for path in config["rule_files"]:
        assert path.startswith(CONFIG_MOUNT), path
        rule_files.append(str(PROMETHEUS_DIR / path.removeprefix(CONFIG_MOUNT)))
    config["rule_files"] = rule_files
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "mfdv"]
    [group] = [g for g in job["static_configs"] if "service:8000" in g["targets"]]
    group["targets"] = [f"{service.host}:{service.port}"]
    job["static_configs"] = [group]
    config["scrape_configs"] = [job]
    return config


def wait_for_scrape_after(prom: PrometheusProcess, t: float) -> None:
    """Until a scrape of the service started after unix time ``t`` is stored (scrapes are stamped at their start).

    ``timestamp()`` of the raw selector: of a computed vector (``up == 1``) it is the evaluation time.
    """
    prom.wait_for(f'timestamp(up{{job="mfdv"}}) > {t:.3f}', "a scrape after the load")
    assert prom.query('up{job="mfdv"}')["result"][0]["value"][1] == "1", prom.api("targets")


@pytest.fixture(scope="module")
def prometheus(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusProcess]:
    """Prometheus that has scraped two rounds of load and evaluated every rule at least once."""
    with PrometheusProcess(scrape_config(server), tmp_path_factory.mktemp("prometheus")) as prom:
        for _ in range(2):
            drive_load(server)
            wait_for_scrape_after(prom, time.time())

        def rules() -> list[dict[str, Any]]:
            return [r for g in prom.api("rules")["groups"] for r in g["rules"]]

        deadline = time.monotonic() + 60
        while any(r["health"] == "unknown" for r in rules()) and time.monotonic() < deadline:
            time.sleep(0.25)
        yield prom


# ---------------------------------------------------------------------------
# the queries
# ---------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) for every query of the dashboard's panels."""
    return [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def promql_regex(value: str) -> str:
    """``value`` as an exact regex inside a PromQL string, escaped as Grafana escapes variable values."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", value)


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variables in ``expr``: ``$__rate_interval`` and ``$__range`` -> WINDOW, template ones by name."""
    values = {"__rate_interval": WINDOW, "__range": WINDOW, **variables}

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"unknown Grafana variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def rule_exprs() -> list[tuple[str, str]]:
    """(rule name, expr) of every alerting and recording rule in deploy/prometheus's rule files."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    out = []
    for path in config["rule_files"]:
        rules = yaml.safe_load((PROMETHEUS_DIR / path.removeprefix(CONFIG_MOUNT)).read_text())
        out += [(r.get("alert") or r["record"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    return out


COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def split_comparison(expr: str) -> tuple[str, str, str] | None:
    """``lhs op rhs`` for a top-level comparison (outside brackets and strings), else None."""
    depth, quote, i = 0, "", 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            op = next((op for op in COMPARISONS if expr.startswith(op, i)), None)
            if op:
                return expr[:i].strip(), op, expr[i + len(op) :].strip()
        i += 1
    return None


def is_number(expr: str) -> bool:
    try:
        float(expr)
    except ValueError:
        return False
    return True


def samples(result: dict[str, Any]) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of an instant query's result, whatever its type."""
    if result["resultType"] == "vector":
        return [(s["metric"], float(s["value"][1])) for s in result["result"]]
    if result["resultType"] == "scalar":
        return [({}, float(result["result"][1]))]
    raise AssertionError(f"unexpected result type {result['resultType']}")


def check_data(prom: PrometheusProcess, expr: str, where: str) -> tuple[list[tuple[dict[str, str], float]], str]:
    """(samples, problem): ``expr`` must parse, evaluate and return a series with a finite value; else a problem."""
    try:
        got = samples(prom.query(expr))
    except PrometheusError as e:
        return [], f"{where}: {e}"
    if not got:
        return got, f"{where}: no data for\n    {expr}"
    if not any(math.isfinite(v) for _, v in got):
        return got, f"{where}: only NaN/Inf for\n    {expr}\n    {got}"
    return got, ""


# ---------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------


def test_prometheus_scrapes_the_service(prometheus: PrometheusProcess, server: ServerProcess) -> None:
    [target] = prometheus.api("targets")["activeTargets"]
    assert target["health"] == "up", target["lastError"]
    assert target["labels"]["variant"] == "cpu"
    assert target["scrapeUrl"] == f"{server.url}/metrics"


def test_every_dashboard_query_returns_data(prometheus: PrometheusProcess, server: ServerProcess) -> None:
    """Each panel query, with ``$instance`` set to the scraped replica, returns finite data;
    every label its legend names is on the returned series."""
    variables = dashboard()["templating"]["list"]
    assert [v["name"] for v in variables] == ["instance"], "a new variable needs a value here"
    # The variable's query, `label_values(mfdv_model_info, instance)`, is what Grafana sends as this API call.
    query = variables[0]["query"]["query"]
    m = re.fullmatch(r"label_values\((\w+), (\w+)\)", query)
    assert m, f"variable query {query!r}: only label_values(metric, label) is translated here"
    metric, label = m.groups()
    instance = f"{server.host}:{server.port}"
    assert prometheus.api(f"label/{label}/values", **{"match[]": metric}) == [instance]

    targets = dashboard_targets()
    assert targets
    problems = []
    for title, expr, legend in targets:
        where = f"panel {title!r}"
        got, problem = check_data(prometheus, substitute(expr, {"instance": promql_regex(instance)}), where)
        problems += [problem] if problem else []
        for name in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if not all(name in labels for labels, _ in got):
                problems.append(f"{where}: legend {legend!r} names {name}, not a label of {got}")
    assert not problems, "\n".join(problems)


def test_every_rule_is_loaded_and_evaluates(prometheus: PrometheusProcess) -> None:
    loaded = {r["name"]: r for g in prometheus.api("rules")["groups"] for r in g["rules"]}
    assert set(loaded) == {name for name, _ in rule_exprs()}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule['health']} {rule.get('lastError')}"


def test_every_rule_expression_returns_data(prometheus: PrometheusProcess) -> None:
    """Every rule expression parses, and what it compares returns data.

    An alert is usually ``<measure> <op> <threshold>``: it is empty while not firing,
    so emptiness says nothing. The whole expression is queried (it must parse and
    evaluate), then each side of its top-level comparison that is not a number: that
    measure must return finite data from the service's real series. The load makes
    every measure defined (5xx answers exist, predictions on the alert's routes
    exist), so an empty side means a metric or label the service does not export.
    An expression without a comparison (a recording rule) must return data itself.
    """
    exprs = rule_exprs()
    assert exprs
    problems = []
    for name, expr in exprs:
        split = split_comparison(expr)
        sides = [] if split is None else [split[0], split[2]]
        try:
            prometheus.query(expr)  # parses and evaluates; empty is fine for an alert that does not fire
        except PrometheusError as e:
            problems.append(f"{name}: {e}")
            continue
        for side in sides or [expr]:
            if not is_number(side):
                problem = check_data(prometheus, side, name)[1]
                problems += [problem] if problem else []
    assert not problems, "\n".join(problems)


def test_split_comparison() -> None:
    assert split_comparison('up{job="mfdv", variant="cpu"} == 0') == ('up{job="mfdv", variant="cpu"}', "==", "0")
    assert split_comparison('sum(rate(x{s=~"5.."}[5m])) / sum(rate(x[5m])) > 0.05') == (
        'sum(rate(x{s=~"5.."}[5m])) / sum(rate(x[5m]))',
        ">",
        "0.05",
    )
    assert split_comparison("(a > b) >= 2 * (c)") == ("(a > b)", ">=", "2 * (c)")
    assert split_comparison('x{a!="b>c"}') is None
