"""The SDK against the in-process service: every input type, results, prompts, volume jobs, the async twin."""

from __future__ import annotations

import asyncio
import io

import httpx
import icseg_client
import nibabel as nib
import numpy as np
import pytest
from icseg_client import AsyncClient, Client, NotFoundError, Prompt, SegmentResult
from icseg_client._inputs import decode_2d, decode_nifti, to_upload
from PIL import Image
from testkit.inputs import AFFINE, ball_volume, disk_pair, save_nifti, save_png

from model.segmenter import Segmenter
from model.volume import MIN_AREA_2D
from model.weights import load_model


@pytest.fixture
def task(rng):
    """A 2D query and a 3-item support set with labels 1 and 2, as arrays."""
    query, _ = disk_pair(rng, size=(44, 60), labels=(1, 2))
    pairs = [disk_pair(rng, labels=(1, 2)) for _ in range(3)]
    return query, [p[0] for p in pairs], [p[1] for p in pairs]


def test_segment_equals_a_direct_segmenter_call(client, task, tiny_weights):
    query, images, masks = task
    result = client.segment(query, images, masks)
    assert isinstance(result, SegmentResult)
    expected = Segmenter(load_model(tiny_weights)).predict(query, images, masks)
    np.testing.assert_array_equal(result.mask, expected)
    assert result.labels == [1, 2] and result.shape == (44, 60) and result.media_type == "image/png"
    assert {"decode", "model", "encode", "round_trip"} <= set(result.timings)
    assert result.affine is None and not result.is_volume
    assert "labels=[1, 2]" in repr(result) and "data" not in repr(result)


def test_every_2d_input_type_gives_the_same_mask(client, task, tmp_path):
    query, images, masks = task
    paths = [save_png(a, tmp_path / f"{name}{i}.png") for name, arrays in (("i", images), ("m", masks))
             for i, a in enumerate(arrays)]
    image_paths, mask_paths = paths[:3], paths[3:]
    query_path = save_png(query, tmp_path / "q.png")
    reference = client.segment(query_path, image_paths, mask_paths).mask
    variants = {
        "str path": (str(query_path), [str(p) for p in image_paths], [str(p) for p in mask_paths]),
        "bytes": (query_path.read_bytes(), [p.read_bytes() for p in image_paths], [p.read_bytes() for p in mask_paths]),
        "numpy": (query, images, masks),
        "PIL": (Image.fromarray(query), [Image.fromarray(a) for a in images], [Image.fromarray(m) for m in masks]),
        "file objects": (io.BytesIO(query_path.read_bytes()), [open(p, "rb") for p in image_paths], mask_paths),
        "numpy (H, W, 1) and bool-free int64 masks": (query[..., None], images, [m.astype(np.int64) for m in masks]),
        "RGB numpy query": (np.repeat(query[..., None], 3, axis=2), images, masks),
    }
    for name, (q, ims, ms) in variants.items():
        np.testing.assert_array_equal(client.segment(q, ims, ms).mask, reference, err_msg=name)
    for f in variants["file objects"][1]:
        f.close()


def test_volume_inputs_path_nibabel_numpy(client, rng, tmp_path):
    volume, _ = ball_volume(rng)
    support = [ball_volume(rng) for _ in range(2)]
    query_path = save_nifti(volume, tmp_path / "q.nii.gz")
    image_paths = [save_nifti(v, tmp_path / f"s{i}.nii.gz") for i, (v, _) in enumerate(support)]
    mask_nibabel = [nib.Nifti1Image(m, AFFINE) for _, m in support]
    by_path = client.segment(query_path, image_paths, mask_nibabel)
    assert by_path.is_volume and by_path.media_type == "application/gzip"
    assert by_path.shape == volume.shape and by_path.mask.shape == volume.shape
    np.testing.assert_allclose(by_path.affine, AFFINE)
    assert isinstance(by_path.nifti, nib.Nifti1Image)
    by_nibabel = client.segment(nib.Nifti1Image(volume, AFFINE), [nib.Nifti1Image(v, AFFINE) for v, _ in support],
                                [m for _, m in support])  # masks as (H, W, D) numpy arrays
    np.testing.assert_array_equal(by_nibabel.mask, by_path.mask)
    np.testing.assert_allclose(by_nibabel.affine, AFFINE)
    by_numpy = client.segment(volume, [v for v, _ in support], [m for _, m in support])
    np.testing.assert_array_equal(by_numpy.mask, by_path.mask)
    np.testing.assert_allclose(by_numpy.affine, np.eye(4))  # a bare array has no geometry: identity


@pytest.mark.parametrize(
    "array,fmt",
    [
        (np.arange(12, dtype=np.uint8).reshape(3, 4), "png"),
        (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000, "png"),
        (np.array([[True, False], [False, True]]), "png"),
        (np.arange(-6, 6, dtype=np.int16).reshape(3, 4) * 1000, "tiff"),  # CT: negative values stay exact
        (np.linspace(-1.5, 2.5, 12, dtype=np.float32).reshape(3, 4), "tiff"),
    ],
)
def test_arrays_are_encoded_losslessly(array, fmt):
    upload = to_upload(array, "query")
    assert upload.format == fmt
    decoded = decode_2d(upload.content)
    np.testing.assert_array_equal(decoded, array.astype(decoded.dtype))
    assert np.array_equal(decoded.astype(np.float64), array.astype(np.float64))


def test_pil_modes_and_masks_are_kept():
    palette = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8), mode="L").convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    upload = to_upload(palette, "support_masks[0]", mask=True)
    with Image.open(io.BytesIO(upload.content)) as im:
        assert im.mode == "P" and np.asarray(im).tolist() == [[0, 1], [2, 3]]  # the indices are the labels
    floats = Image.fromarray(np.array([[0.5, -2.0]], np.float32), mode="F")
    assert decode_2d(to_upload(floats, "query").content).tolist() == [[0.5, -2.0]]
    whole = to_upload(np.array([[0.0, 2.0]]), "support_masks[0]", mask=True)
    assert whole.format == "png" and decode_2d(whole.content).tolist() == [[0, 2]]
    volume = to_upload(np.zeros((4, 5, 6), np.float32), "query")
    assert volume.format == "gzip" and decode_nifti(volume.content).shape == (4, 5, 6)


def test_float_and_16_bit_queries_are_segmented(client, task):
    query, images, masks = task
    ct_like = query.astype(np.float32) * 8.5 - 1000  # the same image on another intensity scale
    as_float = client.segment(ct_like, images, masks)
    assert as_float.media_type == "image/tiff" and as_float.shape == query.shape
    as_uint16 = client.segment(query.astype(np.uint16) * 200, images, masks)
    # min-max normalisation makes the three the same image to the model
    np.testing.assert_array_equal(as_float.mask, client.segment(query, images, masks).mask)
    np.testing.assert_array_equal(as_uint16.mask, as_float.mask)


def test_probs(client, task):
    query, images, masks = task
    result = client.segment(query, images, masks, probs=True, threshold=0.3)
    assert result.probs.shape == (2, *query.shape) and result.probs.dtype == np.float32
    assert 0 <= result.probs.min() and result.probs.max() <= 1
    best = result.probs.argmax(0)
    # where the mask has a label, it is the most probable one (up to the probabilities' 8-bit rounding)
    labelled = result.mask > 0
    agree = (np.array([1, 2])[best] == result.mask)[labelled].mean() if labelled.any() else 1.0
    assert agree > 0.95


def test_save_and_overlay(client, task, tmp_path):
    query, images, masks = task
    result = client.segment(query, images, masks)
    written = result.save(tmp_path / "out" / "mask")
    assert written.name == "mask.png" and written.read_bytes() == result.data
    tif = result.save(tmp_path / "mask.tif")
    np.testing.assert_array_equal(np.asarray(Image.open(tif)), result.mask)
    with pytest.raises(ValueError, match="losslessly"):
        result.save(tmp_path / "mask.jpg")
    rgb = result.overlay()
    assert rgb.shape == (*query.shape, 3) and rgb.dtype == np.uint8
    gray = np.repeat(query[..., None], 3, axis=2)
    for i, label in enumerate(result.labels):
        region = result.mask == label
        if not region.any():
            continue
        edge = icseg_client._overlay.boundary(region)
        assert (rgb[edge] == icseg_client._overlay.PALETTE[i]).all()
        inside = region & ~icseg_client._overlay._dilate(edge)
        np.testing.assert_array_equal(rgb[inside], gray[inside])  # contours only: the anatomy stays visible
    untouched = np.ones(query.shape, bool)
    for label in result.labels:
        untouched &= ~icseg_client._overlay._dilate(result.mask == label)
    np.testing.assert_array_equal(rgb[untouched], gray[untouched])


def test_overlay_shows_contours_of_a_known_mask():
    image = np.full((9, 9), 100, np.uint8)
    mask = np.zeros((9, 9), np.uint8)
    mask[2:7, 2:7] = 3
    rgb = icseg_client.overlay(image, mask)
    colour = icseg_client._overlay.PALETTE[0]
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[3:6, 3:6] = False
    assert (rgb[ring] == colour).all() and (rgb[~ring] == 100).all()


def test_prompts(client, task):
    query, images, masks = task
    prompt = client.create_prompt(images, masks, name="two disks", label_names={1: "bright", 2: "brighter"})
    assert isinstance(prompt, Prompt) and len(prompt.id) == 32
    assert prompt.labels == [1, 2] and prompt.support_size == 3 and prompt.name == "two disks"
    assert prompt.label_names == {1: "bright", 2: "brighter"}
    assert [p.id for p in client.list_prompts()] == [prompt.id]
    assert client.get_prompt(prompt.id) == prompt
    direct = client.segment(query, images, masks)
    for ref in (prompt, prompt.id):
        result = client.segment(query, prompt=ref)
        np.testing.assert_array_equal(result.mask, direct.mask)
        assert result.label_names == {1: "bright", 2: "brighter"}
    client.delete_prompt(prompt)
    assert client.list_prompts() == []
    with pytest.raises(NotFoundError) as info:
        client.segment(query, prompt=prompt)
    assert info.value.code == "prompt_not_found" and info.value.field == "prompt_id"
    with pytest.raises(NotFoundError):
        client.delete_prompt(prompt.id)


def test_volume_job_with_progress(client, app_client, rng, tmp_path, capsys):
    volume, _ = ball_volume(rng, (22, 18, 12))
    support = [ball_volume(rng, (20, 20, 10)) for _ in range(2)]
    query_path = save_nifti(volume, tmp_path / "q.nii.gz")
    images = [save_nifti(v, tmp_path / f"v{i}.nii.gz") for i, (v, _) in enumerate(support)]
    masks = [save_nifti(m, tmp_path / f"m{i}.nii.gz") for i, (_, m) in enumerate(support)]
    seen: list[tuple[int, int]] = []
    result = client.segment_volume(query_path, images, masks, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (12, 12) and all(t == 12 for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert result.shape == volume.shape and result.mask.dtype == np.uint8
    np.testing.assert_allclose(result.affine, AFFINE)
    # the service's X-Labels: the support set's labels, whether or not the mask holds each one
    assert result.labels == [1] and set(np.unique(result.mask)) <= {0, 1}
    assert {"round_trip", "run"} <= set(result.timings)
    # the same request answered synchronously gives the same mask
    np.testing.assert_array_equal(client.segment(query_path, images, masks).mask, result.mask)
    assert result.overlay().shape == (22, 18, 3)
    # the job is deleted once its result is here
    assert app_client.get("/metrics").text.count('icseg_jobs{state="done"} 0.0') == 1
    # progress=True draws a tqdm bar on stderr
    client.segment_volume(query_path, images, masks, progress=True)
    assert "segment_volume" in capsys.readouterr().err


def test_volume_with_a_2d_prompt(client, rng, task):
    _, images, masks = task
    prompt = client.create_prompt(images, masks)
    volume = np.stack([disk_pair(rng, (40, 40), labels=(1, 2))[0] for _ in range(5)], axis=2)  # (H, W, D)
    result = client.segment_volume(nib.Nifti1Image(volume, AFFINE), prompt=prompt, progress=False)
    assert result.shape == (40, 40, 5) and result.labels == [1, 2]
    for z in range(5):  # every slice segmented with the prompt, as a 2D query would be, except that a label
        # covering under MIN_AREA_2D of a slice is cleared there (issue 14: a 2D prompt over a volume no longer
        # labels slices without the structure)
        flat = client.segment(volume[..., z], prompt=prompt).mask
        differ = result.mask[..., z] != flat
        assert differ.mean() < MIN_AREA_2D
        assert all((flat == lab).mean() < MIN_AREA_2D for lab in np.unique(flat[differ]))


def test_job_methods(client, rng, tmp_path):
    volume, _ = ball_volume(rng)
    support = [ball_volume(rng) for _ in range(2)]
    job = client.create_job(volume, [v for v, _ in support], [m for _, m in support])
    assert job.total == volume.shape[2] and job.status in ("queued", "running", "done")
    assert job.labels == [1]  # the support set's, known from the start
    for _ in range(500):
        job = client.get_job(job)
        if job.finished:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert job.status == "done" and job.done == job.total
    result = client.job_result(job)
    assert result.shape == volume.shape and result.labels == [1]
    client.cancel_job(job.id)
    with pytest.raises(NotFoundError):
        client.get_job(job.id)


def test_async_client_twin(make_app, task, rng, tmp_path):
    query, images, masks = task
    sync_mask = Client(http_client=make_app()).segment(query, images, masks).mask
    app = make_app().app
    volume, _ = ball_volume(rng)
    support = [ball_volume(rng) for _ in range(2)]

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                async with AsyncClient(http_client=http) as client:
                    results = await asyncio.gather(*(client.segment(query, images, masks) for _ in range(3)))
                    prompt = await client.create_prompt(images, masks, name="async")
                    assert [p.id for p in await client.list_prompts()] == [prompt.id]
                    by_prompt = await client.segment(query, prompt=prompt)
                    await client.delete_prompt(prompt)
                    seen = []
                    vol = await client.segment_volume(volume, [v for v, _ in support], [m for _, m in support],
                                                      progress=lambda d, t: seen.append((d, t)))
                    assert await client.ready() and (await client.info())["network"]["size"] == 32
                    with pytest.raises(NotFoundError):
                        await client.get_prompt(prompt.id)
                    return results, by_prompt, vol, seen

    results, by_prompt, vol, seen = asyncio.run(main())
    for result in (*results, by_prompt):
        np.testing.assert_array_equal(result.mask, sync_mask)
    assert vol.shape == volume.shape and seen[-1] == (volume.shape[2], volume.shape[2])


def test_environment_fallbacks_and_context_manager(monkeypatch):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"prompts": []})

    monkeypatch.setenv("ICSEG_URL", "http://lab-server:9000/")
    monkeypatch.setenv("ICSEG_API_KEY", "from-env")
    with Client(http_client=httpx.Client(transport=httpx.MockTransport(handler))) as client:
        assert client.list_prompts() == []
        assert "from-env" not in repr(client)
    assert str(seen[0].url) == "http://lab-server:9000/prompts"
    assert seen[0].headers["authorization"] == "Bearer from-env"
    assert seen[0].headers["user-agent"].startswith("icseg-client/")
    explicit = Client("gpu-box:8000", api_key="k2", http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    explicit.list_prompts()
    assert str(seen[1].url) == "http://gpu-box:8000/prompts" and seen[1].headers["authorization"] == "Bearer k2"
    monkeypatch.delenv("ICSEG_URL")
    monkeypatch.delenv("ICSEG_API_KEY")
    default = Client()
    assert default.base_url == "http://127.0.0.1:8000" and default.api_key is None
    default.close()
    assert default._http.is_closed
