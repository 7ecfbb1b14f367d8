"""The OpenAPI document is the contract: schemathesis (every check) against a real ``python -m service``.

Every operation, a fixed seed and a bounded number of cases per operation, against the hand-set
model (``tests/support/hand_model.py``) with small probe caps and an API key, so that accepted
probes are quick and the key's enforcement is checked too (``ignored_auth``). What JSON Schema
cannot state (one label per input, tensor data fitting its shape, the probe caps, real PNG
files) is told to the generator in ``tests/integration/schemathesis_hooks.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.server import REPO, ServerProcess

KEY = "st-key"
MAX_EXAMPLES = 20
CAPS = {
    "MFDV_API_KEY": KEY,
    "MFDV_MAX_INPUTS": "4",
    "MFDV_MAX_SAMPLES": "32",
    "MFDV_MAX_PROBE_INPUTS": "2",
    "MFDV_MAX_PROBE_GRADIENT_BUDGET": "1000",
    "MFDV_MAX_PROBE_QUERIES": "2000",
    "MFDV_MAX_PROBE_SECONDS": "1",
}


def test_every_operation_conforms_to_the_generated_schema(hand_checkpoint: Path, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis.json"
    with ServerProcess(hand_checkpoint, env=CAPS, args=["--device", "cpu", "--no-access-log"]) as server:
        cmd = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--seed",
            "0",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--workers",
            "1",
            "--header",
            f"X-API-Key: {KEY}",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ]
        env = {**os.environ, **CAPS, "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks"}
        run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        server_log = server.log_tail()
    out = run.stdout + run.stderr
    assert report.is_file(), out[-6000:]
    result = json.loads(report.read_text())
    ops, cases = result["operations"], result["test_cases"]
    print(
        f"schemathesis {result['schemathesis_version']}: {ops['tested']}/{ops['total']} operations, "
        f"{cases['generated']} cases, {cases['unique_failures']} failures, {len(result['errors'])} errors"
    )
    assert ops["tested"] == ops["total"] >= 15 and ops["errored"] == 0, out[-6000:]
    assert cases["generated"] >= 15 * MAX_EXAMPLES, out[-6000:]
    assert result["failures"] == [] and cases["unique_failures"] == 0, out[-8000:]
    assert result["errors"] == [], out[-6000:]
    assert run.returncode == 0, out[-6000:]
    assert "Traceback" not in server_log, server_log
