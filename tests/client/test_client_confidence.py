"""The SDK result says how sure the answer is: confidence per label, low_confidence, mismatch, warnings and,
with uncertainty=True, the uncertainty maps (2D and volumes, sync and async, jobs)."""

from __future__ import annotations

import asyncio
import inspect

import httpx
import nibabel as nib
import numpy as np
from icseg_client import AsyncClient, Client
from testkit.inputs import ball_volume, disk_pair


def _pairs(rng, n: int, labels=(1, 2)):
    pairs = [disk_pair(rng, size=(24, 28), labels=labels) for _ in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_every_segmenting_call_takes_uncertainty():
    for cls in (Client, AsyncClient):
        for method in ("segment", "create_job", "segment_volume"):
            assert "uncertainty" in inspect.signature(getattr(cls, method)).parameters, (cls.__name__, method)


def test_result_carries_confidence_and_flags(client, rng):
    query, _ = disk_pair(rng, size=(24, 28), labels=(1, 2))
    images, masks = _pairs(rng, 3)
    result = client.segment(query, images, masks)
    assert set(result.confidence) == {1, 2} and all(0 <= c <= 1 for c in result.confidence.values())
    assert result.calibrated is False  # the tiny test weights have no sidecar
    assert result.mismatch["flagged"] is None and result.mismatch["score"] >= 0
    assert result.low_confidence is bool(result.low_confidence_labels)
    assert isinstance(result.warnings, list) and result.uncertainty is None


def test_uncertainty_maps_2d_sync_and_async(client, app_client, rng):
    query, _ = disk_pair(rng, size=(24, 28), labels=(1, 2))
    images, masks = _pairs(rng, 4)
    result = client.segment(query, images, masks, ensemble=3, uncertainty=True)
    assert result.uncertainty.shape == (2, 24, 28) and result.uncertainty.dtype == np.float32
    assert 0 <= result.uncertainty.min() and result.uncertainty.max() <= 1

    def forward(request):  # the async client over the same in-process service
        r = app_client.request(request.method, request.url.path, content=request.content,
                               headers={k: v for k, v in request.headers.items() if k.lower() != "host"})
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    async def run():
        http = httpx.AsyncClient(transport=httpx.MockTransport(forward), base_url="http://icseg.test")
        async with AsyncClient("http://icseg.test", http_client=http) as c:
            return await c.segment(query, images, masks, uncertainty=True)

    got = asyncio.run(run())
    np.testing.assert_array_equal(got.mask, result.mask)
    assert got.uncertainty.shape == (2, 24, 28) and set(got.confidence) == {1, 2}


def test_volume_job_result_carries_confidence_and_the_uncertainty_volume(client, rng):
    volume, _ = ball_volume(rng, (20, 18, 8))
    supports = [ball_volume(rng, (20, 20, 8)) for _ in range(2)]
    query = nib.Nifti1Image(volume, np.eye(4))
    images = [nib.Nifti1Image(v, np.eye(4)) for v, _ in supports]
    masks = [nib.Nifti1Image(m, np.eye(4)) for _, m in supports]
    result = client.segment_volume(query, images, masks, uncertainty=True, progress=False)
    assert result.mask.shape == (20, 18, 8) and set(result.confidence) == {1}
    assert result.calibrated is False and isinstance(result.warnings, list)
    assert result.uncertainty.shape == (1, 20, 18, 8)
