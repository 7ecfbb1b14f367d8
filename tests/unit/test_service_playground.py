"""The playground page: served from service/static/ (MFDV_UI), self-contained, calling only the public API.

The page itself runs in a real browser in ``tests/integration/test_playground.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from models.attacks import get_attack, list_attacks
from service import Settings, create_app
from service.routes.playground import STATIC_DIR

PUBLIC_API = {
    "../v1/models",
    "../v1/models/{name}/predict",
    "../v1/models/{name}/attack-probe",
    "../v1/predict",  # a service without the model repository
    "../v1/attack-probe",
}
JS = (STATIC_DIR / "playground.js").read_text()
HTML = (STATIC_DIR / "index.html").read_text()


@pytest.fixture(scope="module")
def app(hand_checkpoint: Path) -> FastAPI:
    return create_app(Settings(model_dir=hand_checkpoint, device="cpu"))


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def test_root_redirects_to_the_page_relative_to_itself(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "ui/"
    assert client.get("/ui", follow_redirects=False).headers["location"].endswith("/ui/")
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="playground.js"' in page.text and 'href="playground.css"' in page.text


def test_every_static_file_is_served_with_its_type(client: TestClient) -> None:
    types = {".html": "text/html", ".css": "text/css", ".js": "javascript"}
    files = sorted(STATIC_DIR.iterdir())
    assert {f.suffix for f in files} == set(types)
    for f in files:
        r = client.get(f"/ui/{f.name}")
        assert r.status_code == 200 and types[f.suffix] in r.headers["content-type"], f.name
        assert r.content == f.read_bytes()
    missing = client.get("/ui/nope.js")
    assert missing.status_code == 404 and "error" in missing.json()


def test_the_page_is_not_part_of_the_api_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_ui_can_be_switched_off(hand_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFDV_UI", "false")
    settings = Settings(model_dir=hand_checkpoint, device="cpu")
    assert settings.ui is False
    with TestClient(create_app(settings)) as c:
        for path in ("/", "/ui/", "/ui/playground.js"):
            r = c.get(path)
            assert r.status_code == 404 and "error" in r.json(), path
        assert c.get("/readyz").status_code == 200


def test_no_external_assets() -> None:
    """No CDN, font service or any other host: the page works where there is no internet."""
    url = re.compile(r"(?:https?:)?//[a-z0-9-]+(?:\.[a-z0-9-]+)+", re.IGNORECASE)
    for f in STATIC_DIR.iterdir():
        text = f.read_text()
        assert not url.findall(text), f"{f.name} refers to another host: {url.findall(text)}"
        assert "@import" not in text and "import(" not in text, f.name


def test_the_script_calls_only_the_public_api(client: TestClient) -> None:
    called = set(re.findall(r'"(\.\./[^"]*)"', JS))
    assert called == PUBLIC_API
    assert JS.count("fetch(") == 1  # one helper, `call`, makes every request
    paths = client.get("/openapi.json").json()["paths"]
    assert {p.removeprefix("..") for p in PUBLIC_API} <= set(paths)
    assert JS.count('.replace("{name}", encodeURIComponent(m.name))') == 1  # the one place a model's name goes in


def test_every_element_the_script_looks_up_is_on_the_page() -> None:
    """``$("id")`` and ``$(`id${s}`)`` (a compare column's copy: the page's own id + "-b") name elements of index.html."""
    ids = set(re.findall(r'\bid="([\w-]+)"', HTML))
    looked_up = set(re.findall(r'\$\("([\w-]+)"\)', JS)) | set(re.findall(r"\$\(`([\w-]+)\$\{s\}`\)", JS))
    assert looked_up and not looked_up - ids, f"not on the page: {sorted(looked_up - ids)}"
    for side in ("predict-side", "probe-side"):  # the columns playground.js copies for compare mode
        assert f'id="{side}"' in HTML and f"cloneSide({side!r})".replace("'", '"') in JS
    assert 'id="page"' in HTML and "-b" in JS


def test_every_control_has_a_label() -> None:
    """Each input and select is inside a label or named by one (``for``), or has an aria-label."""
    labelled = set(re.findall(r'<label for="([\w-]+)"', HTML))
    for m in re.finditer(r"<(input|select)\b[^>]*>", HTML):
        tag = m.group(0)
        control_id = re.search(r'id="([\w-]+)"', tag).group(1)
        before = HTML[: m.start()]
        inside_label = before.rfind("<label") > before.rfind("</label>")
        assert inside_label or control_id in labelled or "aria-label" in tag, f"{control_id} has no label"


def test_the_attack_panel_mirrors_the_attack_specs() -> None:
    """Each attack the page offers is registered, and the settings it prefills are the spec's defaults."""
    block = JS[JS.index("const ATTACKS = {") : JS.index("};", JS.index("const ATTACKS = {"))]
    offered = dict(re.findall(r"^\s+(\w+): \{ title: .*?fields: \{ ([^}]*) \}", block, re.MULTILINE))
    assert offered and set(offered) <= set(list_attacks())
    for name, fields in offered.items():
        spec = get_attack(name)
        for field, value in re.findall(r"(\w+): (\d+)", fields):
            assert field in spec.model_fields, f"{name} has no setting {field}"
            assert spec.model_fields[field].default == int(value), f"{name}.{field}: page {value}, spec default"
