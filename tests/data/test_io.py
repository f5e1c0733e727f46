"""Reading and writing images, volumes and masks: formats by magic bytes, bombs refused early, geometry kept."""

from __future__ import annotations

import gzip
import io
import logging
import struct
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from data.errors import InputError
from data.io import ImageData, encode_mask, read_image, read_mask, save_image, to_png_bytes, write_mask

OBLIQUE = np.array([[0.0, -0.8, 0.1, 12.5], [0.9, 0.0, 0.0, -40.0], [0.0, 0.05, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]])


def _pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit grey pixels, followed by a tiny IDAT."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


# -- 2D formats ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "tif", "bmp", "dcm"])
def test_lossless_8_bit_round_trip(tmp_path, rng, ext):
    array = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    image = read_image(save_image(array, tmp_path / f"img.{ext}"))
    assert image.kind == "image"
    assert image.format == {"png": "png", "tif": "tiff", "bmp": "bmp", "dcm": "dicom"}[ext]
    assert image.array.dtype == np.uint8
    np.testing.assert_array_equal(image.array, array)
    assert image.affine is None and image.shape == (37, 53)


@pytest.mark.parametrize("ext", ["png", "tif", "dcm"])
def test_16_bit_is_kept(tmp_path, rng, ext):
    array = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    image = read_image(save_image(array, tmp_path / f"img16.{ext}"))
    assert image.array.dtype == np.uint16
    np.testing.assert_array_equal(image.array, array)


def test_jpeg_grey_and_colour(tmp_path, rng):
    smooth = np.add.outer(np.arange(40), np.arange(60)).astype(np.uint8)
    grey = read_image(save_image(smooth, tmp_path / "grey.jpg"))
    assert grey.format == "jpeg" and grey.array.shape == (40, 60) and grey.array.dtype == np.uint8
    assert np.abs(grey.array.astype(int) - smooth).max() <= 4
    colour = read_image(save_image(np.stack([smooth] * 3, axis=-1), tmp_path / "colour.jpeg"))
    assert colour.array.shape == (40, 60, 3)
    cmyk = read_image(_pil_bytes(Image.new("CMYK", (7, 5)), "JPEG"))
    assert cmyk.array.shape == (5, 7, 3) and cmyk.meta["mode"] == "CMYK"


def test_rgba_becomes_rgb(rng):
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    image = read_image(to_png_bytes(rgba))
    assert image.meta["mode"] == "RGBA"
    np.testing.assert_array_equal(image.array, rgba[..., :3])


def test_palette_and_la_are_converted(rng):
    indices = rng.integers(0, 3, (10, 12), dtype=np.uint8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    data = _pil_bytes(palette, "PNG")
    image = read_image(data)
    assert image.array.shape == (10, 12, 3)
    np.testing.assert_array_equal(image.array[..., 0], np.where(indices == 1, 255, 0))
    np.testing.assert_array_equal(read_mask(data).array, indices)  # as a mask, the indices are the labels
    la = rng.integers(0, 256, (6, 9, 2), dtype=np.uint8)
    image = read_image(_pil_bytes(Image.fromarray(la, "LA"), "PNG"))
    np.testing.assert_array_equal(image.array, la[..., 0])


def test_big_endian_16_bit_tiff_is_native():
    values = np.arange(12, dtype=">u2").reshape(3, 4)
    image = read_image(_pil_bytes(Image.frombytes("I;16B", (4, 3), values.tobytes()), "TIFF"))
    assert image.array.dtype == np.dtype("uint16") and image.array.dtype.isnative
    np.testing.assert_array_equal(image.array, values)


def test_format_comes_from_the_bytes_not_the_name(tmp_path, rng):
    array = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    path = tmp_path / "misleading.nii.gz"
    path.write_bytes(to_png_bytes(array))
    image = read_image(path)
    assert image.format == "png"
    np.testing.assert_array_equal(image.array, array)
    assert read_image(path.read_bytes()).format == "png"


def test_dicom_keeps_no_patient_data(tmp_path, rng):
    path = save_image(rng.integers(0, 4096, (16, 16), dtype=np.uint16), tmp_path / "ct.dcm")
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "123456", "CT"
    ds.save_as(path)
    image = read_image(path)
    assert image.meta["Modality"] == "CT"
    assert image.meta["Rows"] == 16
    text = repr(image.meta)
    assert "Doe" not in text and "123456" not in text


def test_dicom_monochrome1_is_inverted(tmp_path):
    array = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    path = save_image(array, tmp_path / "m1.dcm")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)
    np.testing.assert_array_equal(read_image(path).array, 30 - array)


# -- errors and limits -----------------------------------------------------------------------------------


def _truncated(tmp_path, rng) -> dict[str, bytes]:
    noise = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    volume = rng.normal(size=(16, 16, 16)).astype(np.float32)
    files = {
        "png": to_png_bytes(noise),
        "jpeg": save_image(noise, tmp_path / "t.jpg").read_bytes(),
        "tiff": save_image(noise, tmp_path / "t.tif").read_bytes(),
        "bmp": save_image(noise, tmp_path / "t.bmp").read_bytes(),
        "dicom": save_image(noise, tmp_path / "t.dcm").read_bytes(),
        "nii": save_image(volume, tmp_path / "t.nii").read_bytes(),
        "nii.gz": save_image(volume, tmp_path / "t.nii.gz").read_bytes(),
    }
    return {name: data[: len(data) // 2] for name, data in files.items()}


@pytest.mark.parametrize("name", ["png", "jpeg", "tiff", "bmp", "dicom", "nii", "nii.gz"])
def test_truncated_files_raise_input_error(tmp_path, rng, name):
    data = _truncated(tmp_path, rng)[name]
    with pytest.raises(InputError) as info:
        read_image(data, field="support_images[1]")
    assert info.value.field == "support_images[1]"
    assert info.value.code == "invalid_input"


@pytest.mark.parametrize("name", ["png", "jpeg", "tiff", "bmp", "dicom", "nii", "nii.gz"])
@pytest.mark.parametrize("damage", ["truncated", "header only"])
def test_damaged_file_messages_show_no_object_reprs_or_file_names(tmp_path, rng, name, damage):
    data = _truncated(tmp_path, rng)[name]
    if damage == "header only":  # the format's signature, then junk: the decoder cannot identify the file
        signature = {"png": 8, "jpeg": 3, "tiff": 4, "bmp": 2, "dicom": 132, "nii": 348, "nii.gz": 10}[name]
        data = data[:signature] + b"x" * 60
    path = tmp_path / f"patient-smith.{name}"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(InputError) as info:
            read_image(source)
        message = info.value.message
        assert " at 0x" not in message and "<" not in message and "BytesIO" not in message, message
        assert "patient-smith" not in message and str(tmp_path) not in message, message


@pytest.mark.parametrize(
    "data", [b"", b"hello world", b"GIF89a" + b"\0" * 100, b"\0" * 400, b"%PDF-1.7\n" + b"\0" * 200]
)
def test_unknown_bytes_raise_input_error(data):
    with pytest.raises(InputError) as info:
        read_image(data)
    assert info.value.field == "query"
    assert "PNG" in info.value.message or "empty" in info.value.message
    assert info.value.code == ("unsupported_format" if data else "invalid_input")


def test_missing_path_and_wrong_type(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(InputError):
        read_image(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize("side", [100_000, 10_000])
def test_png_bomb_is_refused_before_decoding(side):
    # the IDAT holds 64 bytes: decoding would fail as "truncated"; the refusal must come from the header
    with pytest.raises(InputError) as info:
        read_image(_png_declaring(side, side))
    assert "pixels" in info.value.message and "truncated" not in info.value.message
    assert info.value.code == "too_large"


def test_max_pixels_is_honoured(rng):
    data = to_png_bytes(rng.integers(0, 256, (30, 40), dtype=np.uint8))
    assert read_image(data, max_pixels=1200).array.shape == (30, 40)
    with pytest.raises(InputError, match="1,200"):
        read_image(data, max_pixels=1199)
    assert read_image(data, max_pixels=None).array.shape == (30, 40)


def test_max_pixels_applies_to_dicom(tmp_path, rng):
    path = save_image(rng.integers(0, 256, (30, 40), dtype=np.uint8), tmp_path / "big.dcm")
    with pytest.raises(InputError, match="above the limit") as info:
        read_image(path, max_pixels=1000)
    assert info.value.code == "too_large"


def test_multi_page_tiff_is_refused():
    pages = [Image.fromarray(np.full((4, 4), i, np.uint8)) for i in range(3)]
    data = _pil_bytes(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(InputError, match="3 frames"):
        read_image(data)


def _nifti_header_bytes(shape, dtype=np.uint8) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    return header.binaryblock + b"\0" * 4  # vox_offset 352


def test_nifti_declaring_too_many_voxels_is_refused():
    data = gzip.compress(_nifti_header_bytes((600, 600, 600)))
    with pytest.raises(InputError, match="voxels") as info:
        read_image(data)
    assert info.value.code == "too_large"
    with pytest.raises(InputError, match="voxels"):
        read_image(_nifti_header_bytes((100, 100, 100)), max_voxels=999_999)


def test_gzip_is_decompressed_only_as_far_as_the_header_declares():
    body = zlib.compressobj(6, zlib.DEFLATED, 31)  # a 32 MiB stream behind a 10 x 10 x 10 header
    data = body.compress(_nifti_header_bytes((10, 10, 10)) + bytes(range(256)) * 4)
    data += body.compress(b"\0" * (32 << 20)) + body.flush()
    tracemalloc.start()
    try:
        image = read_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.array.shape == (10, 10, 10)
    np.testing.assert_array_equal(image.array.ravel(order="F"), np.arange(1000) % 256)  # NIfTI is Fortran order
    assert peak < 4 << 20, f"decoding allocated {peak} bytes: the whole stream was inflated"


def test_damaged_gzip_raises():
    data = bytearray(gzip.compress(_nifti_header_bytes((4, 4, 4)) + b"\1" * 64))
    data[20:30] = b"\xff" * 10
    with pytest.raises(InputError):
        read_image(bytes(data))
    with pytest.raises(InputError, match="NIfTI"):
        read_image(gzip.compress(b"just some text, not a volume" * 40))


# -- NIfTI -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_nifti_reads_with_affine(tmp_path, rng, name):
    volume = rng.normal(size=(9, 10, 11)).astype(np.float32)
    image = read_image(save_image(volume, tmp_path / name, affine=OBLIQUE))
    assert image.kind == "volume" and image.format == "nifti"
    assert image.meta["gzip"] == name.endswith(".gz")
    np.testing.assert_array_equal(image.array, volume)
    np.testing.assert_allclose(image.affine, OBLIQUE, atol=1e-6)
    assert isinstance(image.header, nib.Nifti1Header)


def test_nifti_dimensions(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 1), np.int16), np.eye(4)), tmp_path / "single.nii.gz")
    assert read_image(tmp_path / "single.nii.gz").array.shape == (4, 5, 6)
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.int16), np.eye(4)), tmp_path / "slice.nii")
    assert read_image(tmp_path / "slice.nii").array.shape == (4, 5, 1)
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.int16), np.eye(4)), tmp_path / "series.nii.gz")
    with pytest.raises(InputError, match="one 3D volume") as info:
        read_image(tmp_path / "series.nii.gz", field="query")
    assert info.value.field == "query"


def test_nifti2_and_scaled_and_big_endian(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    nib.save(nib.Nifti2Image(data, OBLIQUE), tmp_path / "two.nii")
    two = read_image(tmp_path / "two.nii")
    assert two.meta["nifti_version"] == 2
    np.testing.assert_array_equal(two.array, data)
    scaled = nib.Nifti1Image(data, np.eye(4))
    scaled.header.set_slope_inter(2.0, 1.0)
    np.testing.assert_allclose(read_image(scaled.to_bytes()).array, data * 2.0 + 1.0)
    big = nib.Nifti1Image(data, np.eye(4), header=nib.Nifti1Header(endianness=">"))
    big.set_data_dtype(np.int16)
    raw = big.to_bytes()
    assert raw[:4] == struct.pack(">i", 348)
    image = read_image(raw)
    assert image.array.dtype.isnative
    np.testing.assert_array_equal(image.array, data)


def test_nifti_mask_round_trip_keeps_geometry(tmp_path, rng):
    query = read_image(save_image(rng.normal(size=(12, 9, 7)).astype(np.float32), tmp_path / "q.nii", affine=OBLIQUE))
    query.header.set_qform(OBLIQUE, code="scanner")
    query.header.set_sform(OBLIQUE, code="aligned")
    mask = rng.integers(0, 3, (12, 9, 7)).astype(np.uint8) * 3
    payload, media_type, extension = encode_mask(mask, query)
    assert (media_type, extension) == ("application/gzip", ".nii.gz")
    assert payload[:2] == b"\x1f\x8b"
    back = read_mask(payload)
    assert back.array.dtype == np.uint8 and back.array.shape == (12, 9, 7)
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_array_equal(back.affine, query.affine)
    assert int(back.header["sform_code"]) == int(query.header["sform_code"])
    assert int(back.header["qform_code"]) == int(query.header["qform_code"])
    assert back.header.get_zooms() == query.header.get_zooms()
    assert back.header.get_data_dtype() == np.uint8
    assert back.header.get_intent()[0] == "label"
    # 16-bit labels
    wide = encode_mask(mask.astype(np.uint16) * 100, query)[0]
    assert read_mask(wide).array.dtype == np.uint16
    # written to disk atomically
    out = write_mask(mask, query, tmp_path / "out" / "mask.nii.gz")
    np.testing.assert_array_equal(read_mask(out).array, mask)
    assert [p.name for p in out.parent.iterdir()] == ["mask.nii.gz"]


def test_scaled_float_query_gives_plain_integer_mask(tmp_path):
    scaled = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), OBLIQUE)
    scaled.header.set_slope_inter(0.5, -3.0)
    query = read_image(scaled.to_bytes())
    back = read_mask(encode_mask(np.ones((2, 3, 4), np.uint8), query)[0])
    np.testing.assert_array_equal(back.array, 1)
    assert back.array.dtype == np.uint8


# -- 2D masks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ext", "fmt", "media_type"), [("png", "png", "image/png"), ("tif", "tiff", "image/tiff")])
def test_2d_mask_round_trip(tmp_path, rng, ext, fmt, media_type):
    query = read_image(save_image(rng.integers(0, 256, (15, 22), dtype=np.uint8), tmp_path / f"q.{ext}"))
    for top, dtype in ((7, np.uint8), (300, np.uint16)):
        mask = rng.integers(0, 2, (15, 22)) * top
        payload, media, extension = encode_mask(mask, query)
        assert media == media_type and extension == f".{ext}"
        back = read_mask(payload)
        assert back.format == fmt and back.array.dtype == dtype
        np.testing.assert_array_equal(back.array, mask)


@pytest.mark.parametrize("ext", ["jpg", "bmp", "dcm"])
def test_other_queries_get_png_masks(tmp_path, rng, ext):
    query = read_image(save_image(rng.integers(0, 256, (15, 22), dtype=np.uint8), tmp_path / f"q.{ext}"))
    payload, media_type, extension = encode_mask(np.eye(15, 22, dtype=np.uint8) * 2, query)
    assert (media_type, extension) == ("image/png", ".png")
    assert read_mask(payload).meta["mode"] == "L"


def test_encode_mask_refuses_wrong_shapes_and_values(rng):
    query = ImageData(array=np.zeros((10, 12, 3), np.uint8), kind="image", format="png")
    for bad in (np.zeros((12, 10), np.uint8), np.zeros((10, 12, 3), np.uint8)):
        with pytest.raises(InputError) as info:
            encode_mask(bad, query)
        assert info.value.field == "mask"
    with pytest.raises(InputError):
        encode_mask(np.full((10, 12), 0.5), query)
    with pytest.raises(InputError):
        encode_mask(np.full((10, 12), -1), query)


def test_grey_rgb_mask_is_a_label_map_colour_mask_is_not(rng):
    labels = rng.integers(0, 4, (8, 9), dtype=np.uint8)
    grey_rgb = to_png_bytes(np.stack([labels] * 3, axis=-1))
    np.testing.assert_array_equal(read_mask(grey_rgb).array, labels)
    grey_rgba = to_png_bytes(np.dstack([labels] * 3 + [np.full_like(labels, 255)]))
    np.testing.assert_array_equal(read_mask(grey_rgba).array, labels)
    colour = np.stack([labels, labels * 2, labels], axis=-1)
    with pytest.raises(InputError, match="label map") as info:
        read_mask(to_png_bytes(colour), field="support_masks[0]")
    assert info.value.field == "support_masks[0]"


def test_mask_value_checks(rng):
    assert read_image(to_png_bytes(np.eye(5, dtype=bool))).array.dtype == bool  # a 1-bit PNG
    bool_mask = read_mask(to_png_bytes(np.eye(5, dtype=bool)))
    assert bool_mask.array.dtype == np.uint8
    np.testing.assert_array_equal(bool_mask.array, np.eye(5))
    fractional = nib.Nifti1Image(np.full((3, 3, 3), 0.5, np.float32), np.eye(4)).to_bytes()
    with pytest.raises(InputError, match="fractional"):
        read_mask(fractional)
    negative = nib.Nifti1Image(np.full((3, 3, 3), -1, np.int16), np.eye(4)).to_bytes()
    with pytest.raises(InputError, match="negative"):
        read_mask(negative)
    whole = nib.Nifti1Image(np.full((3, 3, 3), 4.0, np.float32), np.eye(4)).to_bytes()
    assert read_mask(whole).array.dtype == np.uint8


def test_jpeg_mask_warns(tmp_path, caplog):
    path = save_image(np.zeros((8, 8), np.uint8), tmp_path / "mask.jpg")
    with caplog.at_level(logging.WARNING, logger="data.io"):
        read_mask(path)
    assert "lossy" in caplog.text


def test_to_png_bytes_modes(rng):
    for array, mode in (
        (rng.integers(0, 256, (4, 5), dtype=np.uint8), "L"),
        (rng.integers(0, 65536, (4, 5), dtype=np.uint16), "I;16"),
        (rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), "RGB"),
        (rng.integers(0, 256, (4, 5, 4), dtype=np.uint8), "RGBA"),
    ):
        data = to_png_bytes(array)
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode == mode
        decoded = read_image(data).array
        np.testing.assert_array_equal(decoded, array[..., :3] if array.ndim == 3 else array)
    with pytest.raises(InputError):
        to_png_bytes(np.zeros((4, 5), np.float32))
