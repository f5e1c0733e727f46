"""The viewer and clinical formats (issue 15), in headless Chromium against a real `icseg serve`: a DICOM
query (pydicom's CT_small.dcm) is shown through the server's PNG preview, the legend lists only the labels
the mask holds, with their names; long file names and a 420 px wide screen keep the layout."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image
from testkit import ROOT
from testkit.dicom import pydicom_file

ARTIFACTS = ROOT / "artifacts"
TIMEOUT_MS = 60_000


def _disk_pair(size: int, seed: int) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centre = rng.uniform(0.35, 0.65, 2) * size
    disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < (size / 5) ** 2
    ring = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < (size / 3) ** 2) & ~disk
    image = (rng.normal(60, 10, (size, size)) + 120 * disk + 60 * ring).clip(0, 255).astype(np.uint8)
    mask = (disk * 1 + ring * 3).astype(np.uint8)  # labels 1 and 3: 2 is never there
    out = []
    for array in (image, mask):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out[0], out[1]


def _files(tmp_path, long_names=False):
    images, masks = [], []
    for i in range(3):
        image, mask = _disk_pair(96, i)
        stem = f"patient-{i}-" + "a-very-long-file-name-from-a-pacs-export-" * (3 if long_names else 0)
        images.append(tmp_path / f"{stem}image.png")
        masks.append(tmp_path / f"{stem}mask.png")
        images[-1].write_bytes(image)
        masks[-1].write_bytes(mask)
    query = tmp_path / "CT_small.dcm"
    query.write_bytes(pydicom_file("CT_small.dcm"))
    return images, masks, query


def test_the_server_preview_of_a_dicom_query_is_a_png(server_url):
    response = httpx.post(server_url + "/preview", files=[("query", ("q.dcm", pydicom_file("CT_small.dcm")))])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    preview = np.asarray(Image.open(io.BytesIO(response.content)))
    assert preview.shape == (128, 128) and preview.dtype == np.uint8 and preview.max() > preview.min()


def test_viewer_shows_a_dicom_query_with_named_labels(page, server_url, tmp_path):
    images, masks, query = _files(tmp_path)
    page.goto(server_url + "/")
    page.wait_for_selector("#server-status.ready")
    page.set_input_files("#support-images", [str(p) for p in images])
    page.set_input_files("#support-masks", [str(p) for p in masks])
    page.fill("#label-names", "1: core, 3: rim")
    page.set_input_files("#query", str(query))
    page.wait_for_selector('#stage[data-state="query"]', timeout=TIMEOUT_MS)  # drawn from the preview
    page.click("details.options summary")
    page.fill("#threshold", "0.05")
    page.click("#segment")
    page.wait_for_selector('#stage[data-state="result"]', timeout=TIMEOUT_MS)
    assert page.text_content("#message").startswith("Done")
    assert "shown on black" not in page.text_content("#message")
    drawn = page.evaluate("""() => {
      const c = document.getElementById("image-canvas");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let lit = 0; for (let i = 0; i < d.length; i += 4) lit += d[i] > 0 ? 1 : 0;
      return {width: c.width, height: c.height, lit};
    }""")
    assert (drawn["width"], drawn["height"]) == (128, 128) and drawn["lit"] > 1000  # the CT, not black
    items = page.locator("#legend li").all_text_contents()
    assert items and all(item in ("1 · core", "3 · rim") for item in items), items  # shown labels are named
    assert not any(item.startswith("2") for item in items)  # absent from every mask: never listed
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-dicom.png"), full_page=True)
    assert page.problems == []


def test_long_file_names_and_a_narrow_screen_keep_the_layout(browser, server_url, tmp_path):
    images, masks, _ = _files(tmp_path, long_names=True)
    context = browser.new_context(viewport={"width": 420, "height": 860})
    page = context.new_page()
    try:
        page.goto(server_url + "/")
        page.wait_for_selector("#server-status")
        page.set_input_files("#support-images", [str(p) for p in images])
        page.set_input_files("#support-masks", [str(p) for p in masks])
        layout = page.evaluate("""() => {
          const panel = document.querySelector(".panel").getBoundingClientRect();
          const names = [...document.querySelectorAll(".pairs .names")].map((n) => n.getBoundingClientRect());
          return {page: document.documentElement.scrollWidth, viewport: window.innerWidth,
                  header: document.querySelector("header").getBoundingClientRect().width,
                  panelRight: panel.right, namesRight: Math.max(...names.map((r) => r.right))};
        }""")
        assert layout["page"] <= layout["viewport"], layout  # nothing wider than the screen
        assert layout["header"] >= layout["page"] - 1, layout  # the header spans the page
        assert layout["namesRight"] <= layout["panelRight"], layout  # names stay inside the left panel
        page.screenshot(path=str(ARTIFACTS / "viewer-420px.png"), full_page=True)
    finally:
        context.close()
