"""The viewer shows how sure the answer is: confidence per label and the API's warnings under the result, and
a heat-overlay switch that draws the uncertainty map (the API's, pixel for pixel) instead of the mask."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
from PIL import Image
from test_viewer import TIMEOUT_MS, example_request

# every overlay pixel's alpha, row-major (0 where nothing is drawn)
ALPHAS = """() => {
  const canvas = document.getElementById("overlay-canvas");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const out = [];
  for (let i = 0; i < data.length / 4; i++) out.push(data[4 * i + 3]);
  return out;
}"""


def test_heat_switch_draws_the_uncertainty_map_and_confidence_is_shown(page, server_url):
    _, files = example_request()
    page.goto(server_url + "/")
    page.wait_for_selector("#server-status.ready")
    page.click("#try-example")
    page.wait_for_selector('#stage[data-state="result"]', timeout=TIMEOUT_MS)
    api = httpx.post(server_url + "/segment", files=files, timeout=60,
                     data={"threshold": "0.5", "ensemble": "1", "uncertainty": "true"}).json()

    # confidence per label as the API gives it; the tiny test weights are uncalibrated, and the page says so
    text = page.text_content("#confidence")
    for label, value in api["confidence"].items():
        assert f"{label}" in text and f"{value:.2f}" in text
    assert "not calibrated" in text
    shown = page.eval_on_selector_all("#warnings li", "els => els.map(e => e.textContent)")
    assert shown == api["warnings"]

    mask_alphas = np.array(page.evaluate(ALPHAS))
    assert page.get_attribute("#stage", "data-overlay") == "mask"
    page.check("#heat")
    assert page.get_attribute("#stage", "data-overlay") == "uncertainty"
    heat = np.array(page.evaluate(ALPHAS))
    maps = [np.asarray(Image.open(io.BytesIO(base64.b64decode(m)))) for m in api["uncertainty"]]
    u = np.max(maps, axis=0).ravel() / 255  # the largest over the labels, as the page draws it
    expected = np.round(round(255 * 0.5) * np.minimum(1, 1.5 * u))
    assert np.abs(heat - expected).max() <= 1  # the API's map, at the slider's opacity
    assert not np.array_equal(heat > 0, mask_alphas > 0)  # a different picture from the mask
    page.uncheck("#heat")
    assert np.array_equal(np.array(page.evaluate(ALPHAS)), mask_alphas)
    assert page.problems == []
