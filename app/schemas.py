"""Response bodies, as documented in the OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. invalid_input, prompt_not_found")
    message: str = Field(description="what went wrong and what to change")
    field: str | None = Field(None, description="the request field to change, e.g. support_masks[2]")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "ready"]


class Timings(BaseModel):
    decode: float = Field(description="ms decoding uploads (and reading a stored prompt)")
    model: float = Field(description="ms preparing the support set and in the model, queueing included")
    encode: float = Field(description="ms encoding the mask")


class VolumeInfo(BaseModel):
    slices: int = Field(description="D, the slices along the axis")
    skipped: list[int] = Field(description="slice indices set to background without running the model: far "
                               "outside every support volume's labelled range")
    tasks: int = Field(description="(slice, label) passes the model ran: what the volume cost")
    support_slices: int | None = Field(None, description="support slices per pass (3D support)")
    skip_margin: float | None = Field(None, description="relative depth kept beyond the labelled ranges")
    cascade: bool = False
    coarse: int | None = Field(None, description="coarse-to-fine stride (3D support; 1: every slice in range)")
    support_positions: list[float] | None = Field(None, description="the 2D support pairs' relative depths, as sent")
    label_names: dict[str, str] = Field(default_factory=dict, description="label value -> name (stored prompts)")


class Segment(BaseModel):
    label: int
    name: str
    colour: str = Field(description="'#rrggbb', the viewer's colour for the label")


class Selection(BaseModel):
    select: Literal["all", "similar", "random"] = Field(description="how the query's support items were chosen")
    support_size: int = Field(description="support items the query used")
    pool: int = Field(description="items of the support set (or stored prompt) they were chosen from")


class Mismatch(BaseModel):
    score: float | None = Field(None, description="how far the query's first-block feature statistics lie from the "
                                "support images', in units of their spread (model.confidence; docs/confidence.md)")
    threshold: float | None = Field(None, description="the calibrated threshold for this support size; null when "
                                    "the weights are uncalibrated")
    flagged: bool | None = Field(None, description="true: the query looks unlike the examples (a warning); null: "
                                 "not judged (uncalibrated weights)")


class Quality(BaseModel):
    """How sure the answer is: in every /segment JSON answer and every finished job (docs/confidence.md)."""

    confidence: dict[str, float] = Field(default_factory=dict, description="label value -> confidence in [0, 1]: "
                                         "soft Dice of the probabilities against the predicted region, times the "
                                         "ensemble members' agreement; 0 for a label the mask does not hold")
    low_confidence: bool = Field(False, description="some label's confidence is below the calibrated threshold")
    low_confidence_labels: list[int] = Field(default_factory=list, description="the labels below it")
    mismatch: Mismatch | None = Field(None, description="does the query look like the support images?")
    calibrated: bool = Field(False, description="the thresholds were calibrated for these weights (sha256); false: "
                             "low_confidence uses the fallback 0.5 and the mismatch is not judged")
    warnings: list[str] = Field(default_factory=list, description='e.g. "the query looks unlike the examples", '
                                '"low confidence for label 2"')


class SegmentResult(Quality):
    mask: str = Field(description="the mask file, base64: PNG for 2D queries, NIfTI for NIfTI volumes")
    media_type: str = Field(description="media type of the decoded `mask`")
    labels: list[int] = Field(description="label values of the support set, each segmented: what the mask can hold")
    labels_present: list[int] = Field(default_factory=list, description="label values the mask holds")
    label_names: dict[str, str] = Field(default_factory=dict, description="label value -> name, every label of the "
                                        "support set (from label_names or the stored prompt; else 'label <v>')")
    segments: list[Segment] = Field(default_factory=list, description="every label with its name and colour")
    shape: list[int] = Field(description="shape of the mask (the query's height, width[, depth])")
    timings: Timings
    probs: list[str] | None = Field(
        None, description="with output=probs: 2D, one 8-bit grayscale PNG (base64) per label, 255 = 1.0; volumes, "
        "one gzipped float32 NIfTI (H, W, D, K) in the query's geometry, labels in the order of `labels`"
    )
    volume: VolumeInfo | None = Field(None, description="volumes: what ran, what was skipped")
    uncertainty: list[str] | None = Field(
        None, description="with uncertainty=true: 2D, one 8-bit grayscale PNG (base64) per label, 255 = 1.0; "
        "volumes, one gzipped float32 NIfTI (H, W, D, K); 2 x the ensemble members' std, or the binary entropy "
        "(bits) when one member ran; labels in the order of `labels`")
    selection: Selection | None = Field(None, description="2D support sets: which items the query used (select, "
                                        "support_size)")


class PromptInfo(BaseModel):
    id: str = Field(description="32 hex digits")
    name: str | None = None
    labels: list[int]
    label_names: dict[str, str] = Field(default_factory=dict)
    support_size: int = Field(description="support items S")
    network_size: int = Field(description="side N the support set was prepared at")
    created_at: float = Field(description="unix time")
    expires_at: float | None = Field(None, description="unix time; null: never")
    bytes: int = Field(description="stored size")


class PromptList(BaseModel):
    prompts: list[PromptInfo]


class JobError(BaseModel):
    code: str
    message: str
    field: str | None = None


class Progress(BaseModel):
    done: int = Field(description="slices (or queries) done")
    total: int


class JobInfo(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: Progress
    labels: list[int] | None = Field(None, description="label values of the support set (or prompt): those the "
                                     "mask can hold; also the result's X-Labels header")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = Field(None, description="when a finished job and its result are forgotten")
    error: JobError | None = None
    result: str | None = Field(None, description="path of the result, once done")
    volume: VolumeInfo | None = Field(None, description="once done: what ran, what was skipped")
    probs: str | None = Field(None, description="with output=probs, once done: path of the probabilities NIfTI")
    labels_present: list[int] | None = Field(None, description="once done: label values the mask holds")
    label_names: dict[str, str] | None = Field(None, description="once done: every support label's name")
    segments: list[Segment] | None = Field(None, description="once done: every support label, name and colour "
                                           "(the NIfTI result's sidecar)")
    confidence: dict[str, float] | None = Field(None, description="once done: label value -> confidence (as /segment)")
    low_confidence: bool | None = None
    low_confidence_labels: list[int] | None = None
    mismatch: Mismatch | None = None
    calibrated: bool | None = None
    warnings: list[str] | None = None
    uncertainty: str | None = Field(None, description="a volume job with uncertainty=true, once done: path of the "
                                    "uncertainty NIfTI")
    selection: Selection | None = Field(None, description="2D support sets, from the 202 on: which items the query "
                                        "uses (select, support_size, pool), as /segment's")


class WeightsInfo(BaseModel):
    file: str | None
    source: str | None
    licence: str | None


class NetworkInfo(BaseModel):
    size: int = Field(description="side N of the network's square input")
    encoder_features: list[int]
    decoder_features: list[int]


class Limits(BaseModel):
    max_support: int
    max_upload_mb: float
    max_pixels: int
    max_voxels: int
    sync_max_voxels: int


class Info(BaseModel):
    model: str
    parameters: int
    weights: WeightsInfo
    network: NetworkInfo
    max_support: int
    formats: list[str]
    device: str
    limits: Limits
    prompt_store: Literal["disk", "redis"]


_ERRORS = {
    400: "bad values (shape mismatch, empty mask, both prompt_id and support files)",
    401: "missing or wrong `Authorization: Bearer <key>`",
    404: "unknown prompt or job",
    413: "request, image or volume too large",
    415: "unsupported file format",
    422: "missing or invalid field",
    429: "queue full: retry after the seconds in Retry-After",
    503: "model not loaded or store unavailable (Retry-After when it is expected back)",
    504: "the model did not answer within ICSEG_REQUEST_TIMEOUT_S",
}


def error_responses(*codes: int) -> dict:
    return {c: {"model": ErrorResponse, "description": _ERRORS[c]} for c in codes}


BINARY = {"schema": {"type": "string", "format": "binary"}}
MASK_CONTENT = {"image/png": BINARY, "application/gzip": BINARY, "application/octet-stream": BINARY,
                "application/dicom": BINARY, "application/x-nrrd": BINARY}
