"""What every reader and writer shares: the decoded ``ImageData``, the default limits, message scrubbing.

Letters: H x W a 2D image; a volume is (H, W, D) in its stored order, D slices along the last axis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from data.errors import InputError

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_VOXELS = 512**3
# what the readers decode; a service reports it (GET /info)
FORMATS = ("png", "jpeg", "tiff", "bmp", "nifti", "dicom", "nrrd")


@dataclass
class ImageData:
    """A decoded image or volume with what is needed to write a mask back in the same geometry.

    Attributes:
        array: 2D images (H, W) or (H, W, 3) in the decoded dtype (uint8, uint16, int32, float32, bool);
            volumes (H, W, D) in the stored dtype (scaled to float when the NIfTI header says so).
        kind: "image" or "volume".
        format: "png", "jpeg", "tiff", "bmp", "nifti", "dicom" or "nrrd".
        affine: (4, 4) voxel-to-world matrix of a volume (NIfTI: RAS; DICOM: LPS; NRRD: its ``space``), else None.
        header: the format's own header: nibabel's for NIfTI, the source datasets without pixels for DICOM (in
            slice order), the header dict for NRRD; else None.
        meta: format details (PIL mode, dtype, gzip flag, DICOM geometry); never patient data.
    """

    array: np.ndarray
    kind: str
    format: str
    affine: np.ndarray | None = None
    header: object | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """The spatial shape: (H, W) for images, (H, W, D) for volumes."""
        return tuple(self.array.shape[:2]) if self.kind == "image" else tuple(self.array.shape)

    @property
    def is_3d(self) -> bool:
        """A volume with more than one slice along every axis (a NIfTI holding one 2D slice is not)."""
        return self.kind == "volume" and 1 not in self.array.shape

    def as_nifti(self) -> ImageData:
        """This volume as a NIfTI writer needs it: a NIfTI as it is; DICOM (LPS) and NRRD (its ``space``) with the
        affine turned RAS and no header of their own."""
        if self.format == "nifti":
            return self
        space = str(self.meta.get("space") or "RAS")
        flip = _TO_RAS.get(space, (1.0, 1.0, 1.0))
        affine = None if self.affine is None else np.diag([*flip, 1.0]) @ self.affine
        return ImageData(array=self.array, kind=self.kind, format="nifti", affine=affine, meta={})

    def as_2d(self, field: str) -> np.ndarray:
        """The 2D array of an image, or of a volume with a singleton axis (a NIfTI slice).

        Raises:
            InputError: a 3D volume, where a 2D image is needed (a 2D support item).
        """
        array = self.array
        if self.kind == "volume":
            if self.is_3d:
                raise InputError(f"{field} is a 3D volume {array.shape} but the support set is 2D here; send 2D "
                                 "images, or send a NIfTI query with NIfTI support volumes", field=field)
            array = array.squeeze(axis=array.shape.index(1))
        return array


# patient coordinate systems -> the flips that make them RAS (DICOM is LPS; NRRD names its space)
_TO_RAS = {"LPS": (-1.0, -1.0, 1.0), "left-posterior-superior": (-1.0, -1.0, 1.0),
           "LAS": (-1.0, 1.0, 1.0), "left-anterior-superior": (-1.0, 1.0, 1.0)}

_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")  # <_io.BytesIO object at 0x7f...>
_QUOTED_PATH = re.compile(r"\s*(['\"])(?:/|[A-Za-z]:\\|~)[^'\"]*\1")  # '/tmp/scan.png', "C:\\data\\x.dcm"


def reason(exc: BaseException) -> str:
    """A decoder's own message for an error shown to users: without object reprs (Pillow names the file
    object it read from) and without file paths, which say nothing to a user and may name a patient."""
    text = _QUOTED_PATH.sub("", _OBJECT_REPR.sub("", str(exc))).strip(" :")
    return text or type(exc).__name__
