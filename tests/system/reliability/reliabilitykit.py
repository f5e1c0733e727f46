"""Hostile files, process memory and server helpers for the reliability suite.

The files are built here, byte by byte where a library would refuse to write them (a PNG header that
claims 100,000 x 100,000 pixels, a NIfTI header claiming 30,000^3 voxels), so that every attack is a
few kilobytes on the wire.
"""

from __future__ import annotations

import functools
import gzip
import io
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
from PIL import Image
from testkit.inputs import disk_pair, nifti, png
from testkit.processes import Server

# -- hostile files ---------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, bit_depth: int = 8, idat: bytes | None = None) -> bytes:
    """A grayscale PNG whose header claims width x height; the pixel data is a few bytes (or ``idat``)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64) if idat is None else idat
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


@functools.cache
def png_bomb(side: int = 8000) -> bytes:
    """A complete, valid 1-bit PNG of side x side black pixels: ~8 KB that decode to side^2 bytes."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_declaring(side, side, bit_depth=1, idat=idat)


def nifti_declaring(shape: tuple[int, ...], gz: bool = False) -> bytes:
    """A NIfTI-1 header (int16 voxels) claiming ``shape``, followed by 16 bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    data = header.binaryblock + b"\x00" * 4 + b"\x00" * 16
    return gzip.compress(data) if gz else data


@functools.cache
def nifti_gzip_bomb(padding_mb: int = 256) -> bytes:
    """A valid 32 x 32 x 4 .nii.gz followed, inside the same gzip stream, by ``padding_mb`` MB of zeros."""
    volume = np.random.default_rng(3).normal(100, 10, (32, 32, 4)).astype(np.float32)
    volume[8:24, 8:24] += 300
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6) as out:
        out.write(nib.Nifti1Image(volume, np.eye(4)).to_bytes())
        zeros = b"\x00" * (1 << 20)
        for _ in range(padding_mb):
            out.write(zeros)
    return buf.getvalue()


def float_tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.float32)).save(buf, format="TIFF")
    return buf.getvalue()


def rgba_png(array: np.ndarray) -> bytes:
    return png(array.astype(np.uint8))  # data.io writes (H, W, 4) uint8 as RGBA


def query_file(rng: np.random.Generator, name: str = "query.png", size=(48, 56)) -> tuple:
    image, _ = disk_pair(rng, size)
    return ("query", (name, png(image), "image/png"))


def nifti_file(volume: np.ndarray, gz: bool = True) -> bytes:
    return nifti(volume, gz=gz)


# -- process memory --------------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (Linux VmHWM: exact, not sampled), in MB.

    Elsewhere psutil's current RSS, a lower bound of the peak.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return psutil.Process(pid).memory_info().rss / 2**20


# -- servers ---------------------------------------------------------------------------------------------


def start_server(folder: Path, weights: Path, **env: str) -> Server:
    """A real `icseg serve` on a loopback port (one torch thread: the CI machine has two shared cores)."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {"ICSEG_WEIGHTS": str(weights), "ICSEG_DATA_DIR": str(folder / "data"), "ICSEG_TORCH_THREADS": "1"}
    values.update(env)
    server = Server(values, folder / f"server-{len(list(folder.glob('server-*.log')))}.log")
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


def kill9(server: Server) -> None:
    """SIGKILL: no shutdown handler, no flush, no cleanup; then close its log."""
    server.proc.kill()
    server.proc.wait(10)
    server.stop()
