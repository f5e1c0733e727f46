"""POST /preview: a query the browser cannot draw (DICOM, NRRD, NIfTI, a zipped series, 16-bit TIFF) as an 8-bit
PNG, for the viewer. The same decoders and limits as /segment; nothing is stored."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from app.deps import AUTH, SettingsDep
from app.pipeline import read_uploads
from app.schemas import BINARY, error_responses
from data.io import ImageData, read_series, to_png_bytes

router = APIRouter(tags=["viewer"], dependencies=AUTH)


def preview_png(image: ImageData, slice_index: int | None) -> tuple[bytes, int | None]:
    """(H, W) 8-bit PNG of a 2D image or of one slice (default the middle) along a volume's last axis, windowed
    to the 0.5-99.5 percentiles; and the slice shown (None for 2D)."""
    array = np.asarray(image.array)
    shown = None
    if image.kind == "volume":
        depth = array.shape[-1]
        shown = depth // 2 if slice_index is None else int(np.clip(slice_index, 0, depth - 1))
        array = array[..., shown]
    elif array.ndim == 3:  # colour
        array = array.mean(axis=-1)
    array = array.astype(np.float32)
    lo, hi = np.percentile(array, [0.5, 99.5]) if array.size else (0.0, 1.0)
    scaled = np.clip((array - lo) / max(float(hi - lo), 1e-6), 0, 1)
    return to_png_bytes(np.round(scaled * 255).astype(np.uint8)), shown


@router.post("/preview", response_class=Response,
             responses={200: {"description": "8-bit grayscale PNG of the query (a volume: one slice); header "
                              "X-Preview-Slice: the slice shown", "content": {"image/png": BINARY}},
                        **error_responses(400, 401, 413, 415, 422)},
             summary="A PNG preview of a query (for the viewer)")
async def preview(
    query: Annotated[list[UploadFile], File(description="as /segment takes it: one file, or a DICOM series")],
    settings: SettingsDep,
    slice_index: Annotated[int | None, Form(ge=0, description="volumes: the slice along the last axis")] = None,
) -> Response:
    parts = await read_uploads(query)

    def render():
        image = read_series(parts, max_pixels=settings.max_pixels, max_voxels=settings.max_voxels, field="query")
        return preview_png(image, slice_index)

    payload, shown = await run_in_threadpool(render)
    headers = {"Cache-Control": "no-store"}
    if shown is not None:
        headers["X-Preview-Slice"] = str(shown)
    return Response(payload, media_type="image/png", headers=headers)
