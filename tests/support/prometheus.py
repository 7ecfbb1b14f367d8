"""Run a real ``prometheus`` (Debian's package) on a free loopback port (integration tests).

    with PrometheusProcess(config, tmp_path) as prom:
        prom.query('up{job="mfdv"}')

The process gets the config written to ``workdir/prometheus.yml``, its TSDB in
``workdir/data``, listens on 127.0.0.1 only, is polled until ``/-/ready`` answers
200 (failing early with the log tail if it exits), and gets SIGTERM on exit.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from .process import ManagedProcess
from .server import free_port

logger = logging.getLogger(__name__)

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


class PrometheusError(AssertionError):
    """The query API answered with an error (a query that does not parse or evaluate)."""


class PrometheusProcess(ManagedProcess):
    """``prometheus`` in a subprocess, ready when the context is entered.

    Args:
        config: the configuration (``prometheus.yml`` as a mapping); rule file paths
            should be absolute.
        workdir: where the config, the TSDB and the log go.
        ready_timeout: seconds to wait for ``/-/ready``.
    """

    name = "prometheus"

    def __init__(self, config: dict[str, Any], workdir: Path, *, ready_timeout: float = 60.0) -> None:
        if PROMETHEUS is None:
            raise FileNotFoundError("prometheus is not installed (apt-get install prometheus)")
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.url = f"http://{self.host}:{self.port}"
        self.workdir = Path(workdir)
        self.config_path = self.workdir / "prometheus.yml"
        self.log_path = self.workdir / "prometheus.log"
        self.config = config
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(base_url=self.url, timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def start(self) -> PrometheusProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        cmd = [
            str(PROMETHEUS),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--log.level=warn",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(self._ready_status, "/-/ready")
        return self

    def _ready_status(self) -> int | None:
        try:
            return self._client.get("/-/ready", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def stop(self, timeout: float = 20.0) -> int:
        code = super().stop(timeout)
        self._client.close()
        return code

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a success, else ``PrometheusError`` with Prometheus's message."""
        r = self._client.get(f"/api/v1/{path}", params=params)
        body = r.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query at the current time: ``{"resultType": ..., "result": ...}``."""
        return self.api("query", query=expr)

    def wait_for(self, expr: str, what: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a non-empty vector; return it.

        Raises:
            TimeoutError: still empty after ``timeout`` seconds (with ``what`` and the log tail).
        """
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)["result"]
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: `{expr}` still empty after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.25)
