"""The playground page in a real browser: Debian's Chromium driven by Playwright, against ``python -m service``.

Playwright's own browser download needs the internet, so the test launches the system
Chromium through ``executable_path`` (``scripts/install`` apt-installs ``chromium``; the
``playwright`` package is in the ``dev`` extra). Screenshots go to the test's ``tmp_path``.

Two services: one serving the default checkpoint alone, and one serving the model repository
(``checkpoints/``: the stochastic mfdv model, the default, and the deterministic vanilla one) for
the model picker and compare mode. What the page shows is checked against the API's own answer
for the same image, samples and seed.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.server import REPO, ServerProcess

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

CHROMIUM = os.environ.get("MFDV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SAMPLES = REPO / "samples"
KEY = "playground-test-key"
T, SEED = 48, 7
MFDV, VANILLA = "fashion_mnist_mfdv", "fashion_mnist_vanilla"
SIDES = ("", "-b")  # the ids of the picked model's column, and of the compared model's
WAIT_MS = 120_000  # bounds for conditions on a loaded 2-core machine, not performance targets

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MFDV_CHROMIUM)"
)


@pytest.fixture(scope="module")
def server(default_checkpoint: Path) -> Iterator[ServerProcess]:
    with ServerProcess(default_checkpoint, env={"MFDV_API_KEY": KEY}, args=["--device", "cpu"]) as s:
        yield s


@pytest.fixture(scope="module")
def repo_server() -> Iterator[ServerProcess]:
    with ServerProcess(REPO / "checkpoints", repository=True, env={"MFDV_API_KEY": KEY}, args=["--device", "cpu"]) as s:
        yield s


@pytest.fixture
def page() -> Iterator[sync_api.Page]:
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


def api_predict(server: ServerProcess, sample: Path, model: str | None = None) -> dict:
    """``sample``'s prediction (with the response's ``model`` and ``model_id``): ``model``'s, or the default's."""
    files = {"file": (sample.name, sample.read_bytes(), "image/png")}
    path = f"/v1/models/{model}/predict" if model else "/v1/predict"
    r = httpx.post(f"{server.url}{path}", files=files, data={"samples": T, "seed": SEED}, timeout=60)
    r.raise_for_status()
    body = r.json()
    assert model is None or body["model"] == model
    return {**body["predictions"][0], "model": body["model"], "model_id": body["model_id"]}


def api_probe(server: ServerProcess, sample: Path, model: str | None = None) -> dict:
    """The probe the tests run from the page (FGSM, eps 0.1, 4 EOT draws) on ``sample``, through the API."""
    image = base64.b64encode(sample.read_bytes()).decode()
    body = {
        "inputs": [image],
        "attacks": [{"name": "fgsm", "eps": 0.1, "eot": 4}],
        "seed": SEED,
        "judge_samples": 64,
        "return_adversarial": True,
    }
    path = f"/v1/models/{model}/attack-probe" if model else "/v1/attack-probe"
    r = httpx.post(f"{server.url}{path}", json=body, headers={"X-API-Key": KEY}, timeout=120)
    r.raise_for_status()
    return r.json()


def open_page(page: sync_api.Page, server: ServerProcess, fragment: str = "") -> None:
    """Open the page, wait until /v1/models answered, set the samples and the seed."""
    page.goto(f"{server.url}/ui/{fragment}")
    page.wait_for_function("document.querySelector('#attack').options.length > 0")
    page.fill("#samples", str(T))
    page.fill("#seed", str(SEED))


def check_prediction(page: sync_api.Page, expected: dict, side: str = "") -> None:
    """The column ``side`` shows the API's prediction ``expected``, from the model that made it."""
    assert page.get_attribute(f"#pred-label{side}", "data-label") == str(expected["label"])
    assert page.text_content(f"#pred-label{side}") == expected["class_name"]
    assert page.text_content(f"#pred-prob{side}") == f"p = {expected['probs'][expected['label']]:.3f}"
    assert ("not flagged" in page.text_content(f"#pred-flag{side}")) == (not expected["flagged"])
    assert page.locator(f"#bars{side} .track").count() == len(expected["probs"])
    mi = page.locator(f"#uncertainty{side} tr", has_text="mutual information").locator("td.num").text_content()
    assert mi == js_fixed(expected["uncertainty"]["mutual_information"])
    meta = page.text_content(f"#pred-meta{side}")
    assert f"T = {T} draws, seed {SEED}" in meta, meta
    assert f"Model {expected['model']} ({expected['model_id'][:12]}" in meta, meta


def js_fixed(x: float, digits: int = 3) -> str:
    """The page's ``fmt``: fixed digits, or one-digit exponential below 10^-digits (JavaScript's spelling)."""
    if x != 0 and abs(x) < 10**-digits:
        mantissa, exponent = f"{x:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{x:.{digits}f}"


def check_probe(page: sync_api.Page, report: dict, names: list[str], side: str = "") -> None:
    """The column ``side`` shows the API's probe report ``report``."""
    result = report["attacks"][0]["inputs"][0]
    assert page.text_content(f"#adv-label{side}") == names[result["adv_label"]]
    assert page.text_content(f"#clean-label{side}") == names[report["clean"][0]["label"]]
    verdict = page.text_content(f"#probe-verdict{side}")
    assert verdict.startswith("Fooled" if result["success"] else "Held"), verdict
    flip = page.locator(f"#flip{side} .adv .value").text_content()
    lo, hi = result["flip_ci"]
    assert flip == f"{result['flip_prob']:.2f} [{lo:.2f}, {hi:.2f}]"
    assert page.get_attribute(f"#adv-img{side}", "src") == f"data:image/png;base64,{result['adversarial']}"


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
    # One model: the picker shows it, and compare mode is off, saying why.
    (option,) = page.locator("#model option").all_text_contents()
    assert option.startswith("fashion_mnist_mfdv") and "(mfdv" in option, option
    assert page.is_disabled("#model")
    assert page.is_disabled("#compare-model") and page.input_value("#compare-model") == ""
    assert "serves one" in page.text_content("#compare-note")
    assert page.is_hidden("#predict-side-b") and page.is_hidden("#probe-side-b")
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
    names = httpx.get(f"{server.url}/v1/models").json()["models"][0]["class_names"]
    check_probe(page, api_probe(server, SAMPLES / "bag.png"), names)
    assert page.is_hidden("#probe-summary")


def test_a_service_without_a_default_gets_the_one_model_routes(server: ServerProcess, page: sync_api.Page) -> None:
    """A /v1/models without ``default`` (a service before the model repository): /v1/predict, no compare."""
    calls: list[str] = []

    def older_models(route: sync_api.Route) -> None:
        response = route.fetch()
        body = response.json()
        route.fulfill(
            response=response, json={"models": [{k: v for k, v in body["models"][0].items() if k != "version"}]}
        )

    page.route("**/v1/models", older_models)
    page.on("request", lambda r: calls.append(r.url.removeprefix(server.url)) if r.method == "POST" else None)
    open_page(page, server)
    assert page.is_disabled("#model") and page.is_disabled("#compare-model")
    show_prediction(page, SAMPLES / "sneaker.png")
    check_prediction(page, api_predict(server, SAMPLES / "sneaker.png"))
    assert calls == ["/v1/predict"]


def test_the_picker_sends_the_image_to_the_picked_model(repo_server: ServerProcess, page: sync_api.Page) -> None:
    listed = httpx.get(f"{repo_server.url}/v1/models").json()
    assert listed["default"] == MFDV and {m["name"] for m in listed["models"]} == {MFDV, VANILLA}
    open_page(page, repo_server)
    # Every model, by name and method, the default picked.
    options = page.locator("#model option")
    assert options.evaluate_all("os => os.map(o => o.value)") == [m["name"] for m in listed["models"]]
    for m, text in zip(listed["models"], options.all_text_contents(), strict=True):
        assert text.startswith(m["name"]) and f"({m['method']}" in text, text
    assert page.input_value("#model") == MFDV and MFDV in page.text_content("#model-info")
    assert page.is_enabled("#compare-model") and page.is_hidden("#predict-side-b")

    sample = SAMPLES / "sneaker.png"
    vanilla, mfdv = api_predict(repo_server, sample, VANILLA), api_predict(repo_server, sample, MFDV)
    assert (
        vanilla["model_id"] != mfdv["model_id"] and vanilla["probs"] != mfdv["probs"]
    )  # the page's can tell them apart

    page.select_option("#model", VANILLA)
    assert VANILLA in page.text_content("#model-info") and "vanilla" in page.text_content("#model-info")
    assert page.url.endswith(f"#model={VANILLA}")
    show_prediction(page, sample)
    check_prediction(page, vanilla)
    assert "not flagged" in page.text_content("#pred-flag")

    # Back to the default: the same image goes again, to it.
    page.select_option("#model", MFDV)
    page.wait_for_function(f"document.querySelector('#pred-meta').textContent.includes({mfdv['model_id'][:12]!r})")
    check_prediction(page, mfdv)

    # The pick is in the address: following a link picks it, a reload keeps it.
    page.goto(f"{repo_server.url}/ui/#model={VANILLA}")
    page.wait_for_function(f"document.querySelector('#pred-meta').textContent.includes({vanilla['model_id'][:12]!r})")
    check_prediction(page, vanilla)
    page.reload()
    page.wait_for_function("document.querySelector('#attack').options.length > 0")
    assert page.input_value("#model") == VANILLA and VANILLA in page.text_content("#model-info")


def test_compare_mode_shows_both_predictions_for_one_upload(
    repo_server: ServerProcess, page: sync_api.Page, tmp_path: Path
) -> None:
    # Half a bag, half a dress: the noisy model calls it a shirt and flags it, the deterministic one a bag.
    blend = tmp_path / "bag-dress.png"
    Image.blend(*(Image.open(SAMPLES / f"{n}.png").convert("L") for n in ("bag", "dress")), 0.5).save(blend)
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url.removeprefix(repo_server.url)) if r.method == "POST" else None)
    open_page(page, repo_server)
    page.select_option("#compare-model", VANILLA)
    assert page.is_visible("#predict-side-b") and page.url.endswith(f"#compare={VANILLA}")
    assert VANILLA in page.text_content("#compare-info")
    assert page.text_content("#pred-model").startswith(f"A {MFDV}")
    assert page.text_content("#pred-model-b").startswith(f"B {VANILLA}")
    # The one in the picker is not offered to compare with.
    assert MFDV not in page.locator("#compare-model option").evaluate_all("os => os.map(o => o.value)")

    for sample in (blend, SAMPLES / "bag.png"):
        calls.clear()
        page.click("#clear")
        assert page.is_hidden("#prediction") and page.is_hidden("#prediction-b")
        page.set_input_files("#file", str(sample))  # one upload
        page.wait_for_selector("#prediction:not([hidden])")
        page.wait_for_selector("#prediction-b:not([hidden])")
        page.wait_for_selector("#predict-summary:not([hidden])")
        assert sorted(calls) == sorted(f"/v1/models/{m}/predict" for m in (MFDV, VANILLA)), calls
        expected = [api_predict(repo_server, sample, m) for m in (MFDV, VANILLA)]
        for side, e in zip(SIDES, expected, strict=True):
            check_prediction(page, e, side)
        agree = expected[0]["label"] == expected[1]["label"]
        summary = page.locator("#predict-summary")
        assert summary.get_attribute("data-agree") == str(agree).lower()
        if sample == blend:
            assert not agree and expected[0]["flagged"] and not expected[1]["flagged"], expected  # the case it shows
            assert summary.text_content().startswith("The models disagree")
            assert f"only {MFDV} flags it" in summary.text_content()
            # Each column marks the class the other model predicts.
            assert page.locator("#bars .name.other").all_text_contents() == [expected[1]["class_name"]]
            assert page.locator("#bars-b .name.other").all_text_contents() == [expected[0]["class_name"]]
        else:
            assert agree and summary.text_content().startswith(
                f"The models agree: both predict {expected[0]['class_name']}"
            )
            assert page.locator(".bars .name.other").count() == 0
        page.screenshot(path=tmp_path / f"compare-{sample.stem}.png", full_page=True)

    # Side by side: the two columns start at the same height, B to the right of A.
    a, b = (page.locator(f"#predict-side{s}").bounding_box() for s in SIDES)
    assert abs(a["y"] - b["y"]) < 2 and b["x"] >= a["x"] + a["width"], (a, b)

    # Compare mode off: one column again.
    page.select_option("#compare-model", "")
    page.wait_for_function("document.querySelector('#predict-side-b').hidden")
    assert page.is_hidden("#predict-summary")


def test_a_probe_in_compare_mode_shows_both_results(
    repo_server: ServerProcess, page: sync_api.Page, tmp_path: Path
) -> None:
    sample = SAMPLES / "bag.png"
    open_page(page, repo_server, f"#compare={VANILLA}")  # compare mode from the address
    assert page.input_value("#compare-model") == VANILLA
    show_prediction(page, sample)
    page.wait_for_selector("#prediction-b:not([hidden])")
    page.fill("#api-key", KEY)
    page.select_option("#attack", "fgsm")
    page.fill("#eps", "0.1")
    page.fill("#eot", "4")
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url.removeprefix(repo_server.url)) if r.method == "POST" else None)
    page.click("#run-probe")
    page.wait_for_selector("#probe-summary:not([hidden])")
    assert (
        page.is_hidden("#probe-error") and page.is_hidden("#probe-side-error") and page.is_hidden("#probe-side-error-b")
    )
    assert calls == [f"/v1/models/{m}/attack-probe" for m in (MFDV, VANILLA)]
    names = httpx.get(f"{repo_server.url}/v1/models").json()["models"][0]["class_names"]
    reports = [api_probe(repo_server, sample, m) for m in (MFDV, VANILLA)]
    for side, report in zip(SIDES, reports, strict=True):
        check_probe(page, report, names, side)
    outcomes = [
        "held" if not r["success"] else "flagged" if r["flagged"] else "fooled"
        for r in (report["attacks"][0]["inputs"][0] for report in reports)
    ]
    assert page.get_attribute("#probe-summary", "data-outcomes") == ",".join(outcomes)
    page.screenshot(path=tmp_path / "compare-probe.png", full_page=True)

    # Another model picked: the results were for the models before, and go.
    page.select_option("#compare-model", "")
    assert page.is_hidden("#probe-result") and page.is_hidden("#probe-summary")
    assert "run the attack again" in page.text_content("#probe-empty")
