"""A bounded, seeded mutation fuzzer (issue 13, finding 3): real seed files of every format, mutated byte by
byte (header bytes most often), sent as the query, a support image, a support mask or a prompt's files;
no answer may be a 5xx.

    FUZZ_CASES=2000 FUZZ_SEED=13 pytest tests/system/reliability/test_mutation_fuzz.py -q     # CI (~1 min)
    FUZZ_CASES=20000 FUZZ_SEED=1 pytest tests/system/reliability/test_mutation_fuzz.py -q -s  # the long run

Hypothesis draws the mutations (derandomised from FUZZ_SEED, no example database), so a failure replays
with the same seed; the status counts are printed with -s.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from collections import Counter

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image
from testkit.inputs import disk_pair, png

from data.io.dicom import dicom_bytes

CASES = int(os.environ.get("FUZZ_CASES", "2000"))
SEED = int(os.environ.get("FUZZ_SEED", "13"))
EXTREMES = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 1 << 20]
FLOATS = [float("nan"), float("inf"), -1.0, 0.0, 1e38, 1e-38]


def _pil(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, tuple[bytes, bytes]]:
    """(image, mask) seed pairs of every format the service reads; 48 x 56 with a disk of label 1."""
    rng = np.random.default_rng(0)
    image, mask = disk_pair(rng)
    image8 = np.asarray(image, np.uint8)
    mask8 = np.asarray(mask, np.uint8)
    vol = np.repeat(image8[::2, ::2, None], 3, axis=2)  # (24, 28, 3): small, so that a pass is cheap
    vmask = np.repeat(mask8[::2, ::2, None], 3, axis=2)
    nii = nib.Nifti1Image(vol.astype(np.int16), np.diag([0.8, 0.8, 2.0, 1])).to_bytes()
    nii_mask = nib.Nifti1Image(vmask, np.eye(4)).to_bytes()
    return {
        "png": (png(image8), png(mask8)),
        "png16": (png(image8.astype(np.uint16) * 200), png(mask8.astype(np.uint16) * 300)),
        "jpeg": (_pil(image8, "JPEG", quality=90), png(mask8)),
        "tiff": (_pil(image8, "TIFF"), _pil(mask8, "TIFF")),
        "tiff-deflate": (_pil(image8, "TIFF", compression="tiff_adobe_deflate"), png(mask8)),
        "bmp": (_pil(image8, "BMP"), _pil(mask8, "BMP")),
        "dicom": (dicom_bytes(image8), png(mask8)),
        "nii": (nii, nii_mask),
        "nii.gz": (gzip.compress(nii, mtime=0), gzip.compress(nii_mask, mtime=0)),
        "nii2.gz": (gzip.compress(nib.Nifti2Image(vol.astype(np.float32), np.eye(4)).to_bytes(), mtime=0),
                    gzip.compress(nib.Nifti2Image(vmask, np.eye(4)).to_bytes(), mtime=0)),
    }


SEEDS = _seeds()
ROLES = ["query", "support_image", "support_mask", "prompt_image", "prompt_mask"]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` with 1-4 mutations: bit flips, extreme 2/4-byte integers, float32 specials, insertions,
    deletions, truncation; positions in the first 600 bytes (headers) three times out of four."""
    out = bytearray(data)
    gz = data[:2] == b"\x1f\x8b" and draw(st.booleans())  # mutate what the gzip holds, then re-wrap it
    if gz:
        out = bytearray(gzip.decompress(data))
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        head = draw(st.integers(0, 3)) > 0
        pos = draw(st.integers(0, min(len(out), 600) - 1 if head else len(out) - 1))
        kind = draw(st.sampled_from(["flip", "int16", "int32", "float", "insert", "delete", "truncate", "byte"]))
        if kind == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            out[pos] = draw(st.integers(0, 255))
        elif kind in ("int16", "int32"):
            size, fmt = (2, "H") if kind == "int16" else (4, "I")
            value = draw(st.sampled_from(EXTREMES)) & (0xFFFF if size == 2 else 0xFFFFFFFF)
            order = draw(st.sampled_from("<>"))
            if pos + size <= len(out):
                struct.pack_into(order + fmt, out, pos, value)
        elif kind == "float" and pos + 4 <= len(out):
            struct.pack_into("<f", out, pos, draw(st.sampled_from(FLOATS)))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del out[pos:pos + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del out[pos:]
    return gzip.compress(bytes(out), mtime=0) if gz else bytes(out)


@st.composite
def cases(draw):
    fmt = draw(st.sampled_from(sorted(SEEDS)))
    role = draw(st.sampled_from(ROLES))
    image, mask = SEEDS[fmt]
    target = mask if role.endswith("mask") else image
    return fmt, role, draw(mutated(target))


@pytest.fixture(scope="module")
def fuzz_client(tiny_weights, tmp_path_factory):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    settings = Settings(weights=tiny_weights, data_dir=tmp_path_factory.mktemp("fuzz"), sweep_interval_s=3600,
                        prompt_store_mb=64, job_queue_size=64)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_mutated_files_of_every_format_never_get_a_5xx(fuzz_client):
    statuses: Counter = Counter()
    fails: list = []
    base_image, base_mask = SEEDS["png"]
    vol_image, vol_mask = SEEDS["nii.gz"]

    @seed(SEED)
    @settings(max_examples=CASES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(cases())
    def run(case):
        fmt, role, payload = case
        # a volume query takes 2D support (cheap); mutated volume support needs a volume query
        volume_support = fmt.startswith("nii") and role in ("support_image", "support_mask")
        image, mask = (vol_image, vol_mask) if volume_support else (base_image, base_mask)
        query = vol_image if volume_support else image
        if role == "query":
            query = payload
        elif role == "support_image":
            image = payload
        elif role == "support_mask":
            mask = payload
        if role.startswith("prompt"):
            image, mask = (payload, base_mask) if role == "prompt_image" else (base_image, payload)
            response = fuzz_client.post("/prompts", files=[("support_images", ("i", image)),
                                                           ("support_masks", ("m", mask))])
        else:
            response = fuzz_client.post("/segment", files=[("query", ("q", query)), ("support_images", ("i", image)),
                                                           ("support_masks", ("m", mask))])
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            fails.append((fmt, role, response.status_code, response.text[:200]))
        assert response.status_code < 500, (fmt, role, response.text[:300])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"code", "message", "field"}

    run()
    print(f"\nmutation fuzz: {sum(statuses.values())} cases, seed {SEED}: {dict(sorted(statuses.items()))}")
    assert not fails
    assert sum(statuses.values()) >= min(CASES, 100)
