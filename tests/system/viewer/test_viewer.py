"""The viewer at `/`: served without a key, its example valid, and in a real browser against a real
`icseg serve`: the example runs, the overlay holds exactly the mask's pixels, the downloaded mask is the
API's answer for the same inputs, a stored prompt can be picked, and API errors are shown in words."""

from __future__ import annotations

import io
import json
import re

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from testkit import EXAMPLE, ROOT

from app.main import create_app
from app.settings import Settings
from data.io import read_image, read_mask, to_png_bytes

ARTIFACTS = ROOT / "artifacts"
TIMEOUT_MS = 60_000
# indices of the overlay canvas's pixels that are drawn (alpha > 0), and the alpha values used
OVERLAY_PIXELS = """() => {
  const canvas = document.getElementById("overlay-canvas");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const drawn = [], alphas = new Set(), colours = new Set();
  for (let i = 0; i < data.length / 4; i++) {
    if (data[4 * i + 3] > 0) { drawn.push(i); alphas.add(data[4 * i + 3]); }
  }
  return {width: canvas.width, height: canvas.height, drawn, alphas: [...alphas]};
}"""


def example_request() -> tuple[dict, list[tuple]]:
    manifest = json.loads((EXAMPLE / "manifest.json").read_text())
    files = [("query", (manifest["query"], (EXAMPLE / manifest["query"]).read_bytes(), "image/png"))]
    for pair in manifest["support"]:
        files += [("support_images", (pair["image"], (EXAMPLE / pair["image"]).read_bytes(), "image/png")),
                  ("support_masks", (pair["mask"], (EXAMPLE / pair["mask"]).read_bytes(), "image/png"))]
    return manifest, files


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_viewer_is_public_when_api_keys_are_set(tmp_path):
    """The page holds no data: it loads without a key and asks for one; the API behind it still needs it."""
    app = create_app(Settings(api_keys=["k1"], data_dir=tmp_path, weights=tmp_path / "none.safetensors"))
    client = TestClient(app)  # no lifespan: the model is not needed to serve the page
    page = client.get("/")
    assert page.status_code == 200 and 'id="try-example"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = client.get("/static/viewer.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/static/example/query.png").headers["content-type"] == "image/png"
    assert client.get("/prompts").status_code == 401
    # nothing outside app/static, no way around the key through /static/, a missing file is error JSON
    for path in ("/static/%2e%2e/main.py", "/static/%2e%2e/%2e%2e/app/settings.py", "/static/%2e%2e/prompts",
                 "/static/nothing.js"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", path
    assert "/" not in app.openapi()["paths"]


def test_example_is_a_valid_prompt():
    manifest, _ = example_request()
    query = read_image(EXAMPLE / manifest["query"])
    assert len(manifest["support"]) >= 3
    for pair in manifest["support"]:
        image, mask = read_image(EXAMPLE / pair["image"]), read_mask(EXAMPLE / pair["mask"])
        assert image.shape == mask.shape == query.shape
        values = set(np.unique(mask.array).tolist())
        assert values == {0, *map(int, manifest["label_names"])}
        assert 0.05 < (mask.array > 0).mean() < 0.3


def test_viewer_runs_the_example(page, server_url):
    manifest, files = example_request()
    page.goto(server_url + "/")
    page.wait_for_selector("#server-status.ready")
    page.click("#try-example")
    page.wait_for_selector('#stage[data-state="result"]', timeout=TIMEOUT_MS)
    assert page.text_content("#message").startswith("Done")

    api = httpx.post(server_url + "/segment", files=files, data={"threshold": "0.5", "ensemble": "1"}, timeout=60)
    assert api.status_code == 200, api.text
    mask = png_array(api.content)
    assert mask.any(), "precondition: the tiny network labels some pixels of the example"

    # the overlay is drawn at the query's size, on exactly the mask's pixels, at the slider's opacity
    overlay = page.evaluate(OVERLAY_PIXELS)
    assert (overlay["height"], overlay["width"]) == mask.shape
    assert overlay["drawn"] == np.flatnonzero(mask).tolist()
    assert overlay["alphas"] == [round(255 * 0.5)]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)

    # the download is the API's answer, byte for byte
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "mask.png"
    assert open(download.value.path(), "rb").read() == api.content

    legend = page.text_content("#legend")
    assert f"1 · {manifest['label_names']['1']}" in legend

    # outline: a subset of the mask (its boundary); the opacity slider changes the alpha
    page.check('input[name="mode"][value="outline"]')
    outline = page.evaluate(OVERLAY_PIXELS)
    assert 0 < len(outline["drawn"]) <= len(overlay["drawn"]) and set(outline["drawn"]) <= set(overlay["drawn"])
    page.check('input[name="mode"][value="fill"]')
    page.eval_on_selector("#opacity", "el => { el.value = 100; el.dispatchEvent(new Event('input')); }")
    assert page.evaluate(OVERLAY_PIXELS)["alphas"] == [255]
    assert page.problems == []


def test_viewer_uses_a_stored_prompt_and_shows_api_errors(page, server_url):
    manifest, files = example_request()
    page.goto(server_url + "/")
    page.click("#try-example")
    page.wait_for_selector('#stage[data-state="result"]', timeout=TIMEOUT_MS)

    # store the example pairs as a prompt, then segment with it
    page.fill("#prompt-name", "viewer test")
    page.click("#save-prompt")
    page.wait_for_selector("#message:has-text('Stored prompt viewer test')", timeout=TIMEOUT_MS)
    prompt_id = page.input_value("#prompt-select")
    assert re.fullmatch(r"[0-9a-f]{32}", prompt_id) and page.is_visible("#prompt-select")
    page.click("#segment")
    page.wait_for_selector("#message:has-text('Done')", timeout=TIMEOUT_MS)
    query = [f for f in files if f[0] == "query"]
    api = httpx.post(server_url + "/segment", files=query, data={"prompt_id": prompt_id}, timeout=60)
    with page.expect_download() as download:
        page.click("#download")
    assert open(download.value.path(), "rb").read() == api.content

    # a mask that does not match its image: the API's own message, in words, on the page
    page.check('input[name="source"][value="pairs"]')
    page.click("#clear-pairs")
    image = to_png_bytes(np.full((32, 32), 90, np.uint8))
    bad_mask = to_png_bytes(np.pad(np.ones((20, 20), np.uint8), 10))  # 40 x 40
    page.set_input_files("#support-images", files=[{"name": "a.png", "mimeType": "image/png", "buffer": image}])
    page.set_input_files("#support-masks", files=[{"name": "a-mask.png", "mimeType": "image/png", "buffer": bad_mask}])
    page.click("#segment")
    page.wait_for_selector("#message.error", timeout=TIMEOUT_MS)
    expected = httpx.post(server_url + "/segment", files=[*query, ("support_images", ("a.png", image)),
                                                         ("support_masks", ("a-mask.png", bad_mask))], timeout=60)
    assert expected.status_code == 400
    error = expected.json()["error"]
    assert page.text_content("#message") == f"{error['message']} (field: {error['field']})"
    # the browser logs the 400 itself; anything else is a fault of the page
    assert [p for p in page.problems if "Failed to load resource" not in p] == []


@pytest.mark.parametrize("missing", ["query", "pairs"])
def test_viewer_says_what_is_missing(page, server_url, missing):
    page.goto(server_url + "/")
    if missing == "pairs":
        page.set_input_files("#query", files=[{"name": "q.png", "mimeType": "image/png",
                                               "buffer": (EXAMPLE / "query.png").read_bytes()}])
    page.click("#segment")
    text = page.text_content("#message")
    assert ("query image first" if missing == "query" else "Add example pairs") in text
    assert page.problems == []


def test_viewer_asks_for_the_api_key(page, keyed_server):
    url, key = keyed_server
    page.goto(url + "/")
    page.wait_for_selector("#server-status:has-text('enter the API key')")
    page.click("#try-example")
    page.wait_for_selector("#message.error", timeout=TIMEOUT_MS)
    assert "Enter the key in the API key box" in page.text_content("#message")
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#server-status:has-text('ready · icseg')")
    page.click("#segment")
    page.wait_for_selector('#stage[data-state="result"]', timeout=TIMEOUT_MS)
    assert page.text_content("#message").startswith("Done")
    # the key stays in this tab's session storage, not in the page's address or local storage
    assert page.evaluate("sessionStorage.getItem('icseg.apiKey')") == key
    assert page.evaluate("localStorage.length") == 0 and key not in page.url
    assert [p for p in page.problems if "Failed to load resource" not in p] == []
