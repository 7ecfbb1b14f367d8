"""The playground page in a real browser: Debian's Chromium driven by Playwright, against ``python -m service``.

Playwright's own browser download needs the internet, so the test launches the system
Chromium through ``executable_path`` (``scripts/install`` apt-installs ``chromium``; the
``playwright`` package is in the ``dev`` extra). Screenshots go to the test's ``tmp_path``.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import REPO, ServerProcess

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

CHROMIUM = os.environ.get("MFDV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SAMPLES = REPO / "samples"
KEY = "playground-test-key"
T, SEED = 48, 7
WAIT_MS = 120_000  # bounds for conditions on a loaded 2-core machine, not performance targets

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MFDV_CHROMIUM)"
)


@pytest.fixture(scope="module")
def server(default_checkpoint: Path) -> Iterator[ServerProcess]:
    with ServerProcess(default_checkpoint, env={"MFDV_API_KEY": KEY}, args=["--device", "cpu"]) as s:
        yield s


@pytest.fixture
def page(server: ServerProcess) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


def api_predict(server: ServerProcess, sample: Path) -> dict:
    files = {"file": (sample.name, sample.read_bytes(), "image/png")}
    r = httpx.post(f"{server.url}/v1/predict", files=files, data={"samples": T, "seed": SEED}, timeout=60)
    r.raise_for_status()
    return r.json()["predictions"][0]


def show_prediction(page: sync_api.Page, sample: Path) -> None:
    """Clear the page, upload ``sample`` and wait until its prediction is shown."""
    page.click("#clear")
    assert page.is_hidden("#prediction")
    page.set_input_files("#file", str(sample))
    page.wait_for_selector("#prediction:not([hidden])")
    meta = page.text_content("#pred-meta")
    assert f"T = {T} draws, seed {SEED}" in meta, meta


def test_predict_and_attack_in_the_browser(server: ServerProcess, page: sync_api.Page, tmp_path: Path) -> None:
    page.goto(f"{server.url}/")  # redirects to /ui/
    assert page.url.endswith("/ui/")
    page.wait_for_function("document.querySelector('#attack').options.length > 0")  # /v1/models answered
    assert "fashion_mnist_mfdv" in page.text_content("#model-info")
    page.fill("#samples", str(T))
    page.fill("#seed", str(SEED))

    for name in ("sneaker.png", "bag.png"):
        sample = SAMPLES / name
        show_prediction(page, sample)
        expected = api_predict(server, sample)
        assert page.get_attribute("#pred-label", "data-label") == str(expected["label"])
        assert page.text_content("#pred-label") == expected["class_name"]
        assert page.text_content("#pred-prob") == f"p = {expected['probs'][expected['label']]:.3f}"
        assert ("not flagged" in page.text_content("#pred-flag")) == (not expected["flagged"])
        assert page.locator("#bars .track").count() == len(expected["probs"])
        page.screenshot(path=tmp_path / f"predict-{sample.stem}.png", full_page=True)

    # The probe needs the key: without it the page shows the 401 and says where to put the key.
    page.select_option("#attack", "fgsm")
    page.fill("#eps", "0.1")
    page.fill("#eot", "4")
    page.click("#run-probe")
    page.wait_for_selector("#probe-error:not([hidden])")
    assert "X-API-Key" in page.text_content("#probe-error")

    page.fill("#api-key", KEY)
    page.click("#run-probe")
    page.wait_for_function(
        "() => document.querySelector('#adv-img').naturalWidth === 28 && document.querySelector('#heat-scale').textContent"
    )
    assert page.is_hidden("#probe-error")
    src = page.get_attribute("#adv-img", "src")
    assert (
        src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    )
    page.screenshot(path=tmp_path / "probe.png", full_page=True)

    # The same probe through the API (same image, seed and settings) reports what the page shows.
    bag = base64.b64encode((SAMPLES / "bag.png").read_bytes()).decode()
    body = {"inputs": [bag], "attacks": [{"name": "fgsm", "eps": 0.1, "eot": 4}], "seed": SEED, "judge_samples": 64}
    r = httpx.post(f"{server.url}/v1/attack-probe", json=body, headers={"X-API-Key": KEY}, timeout=120)
    r.raise_for_status()
    report = r.json()
    names = httpx.get(f"{server.url}/v1/models").json()["models"][0]["class_names"]
    result = report["attacks"][0]["inputs"][0]
    assert page.text_content("#adv-label") == names[result["adv_label"]]
    assert page.text_content("#clean-label") == names[report["clean"][0]["label"]]
    verdict = page.text_content("#probe-verdict")
    assert verdict.startswith("Fooled" if result["success"] else "Held"), verdict
    flip = page.locator("#flip .adv .value").text_content()
    lo, hi = result["flip_ci"]
    assert flip == f"{result['flip_prob']:.2f} [{lo:.2f}, {hi:.2f}]"
