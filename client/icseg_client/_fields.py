"""The optional form fields of /segment and /jobs, checked before anything is sent: each raises
``InvalidInputError`` naming the argument for a value the service would refuse."""

from __future__ import annotations

import json

from ._errors import InvalidInputError


def request_fields(support_slices: int | None, skip_margin: float | None, cascade: bool | None,
                   label_names: dict[int, str] | None, output: str | None, select: str | None = None,
                   support_size: int | None = None, uncertainty: bool = False,
                   support_positions: list[float] | None = None) -> dict[str, str]:
    """Every optional form field of /segment and /jobs (``volume_fields``, ``clinical_fields`` and
    ``selection_fields``; ``uncertainty=true`` asks for the uncertainty maps)."""
    return {**volume_fields(support_slices, skip_margin, cascade, support_positions),
            **clinical_fields(label_names, output),
            **selection_fields(select, support_size), **({"uncertainty": "true"} if uncertainty else {})}


SELECTS = ("all", "similar", "random")


def selection_fields(select: str | None, support_size: int | None) -> dict[str, str]:
    """Which support items a query uses (None: the service's default), checked before anything is sent.

    Raises:
        InvalidInputError: a value the service would refuse, naming the argument.
    """
    data: dict[str, str] = {}
    if select is not None:
        if select not in SELECTS:
            raise InvalidInputError(f"select must be one of {', '.join(SELECTS)}, got {select!r}", "select")
        data["select"] = select
    if support_size is not None:
        if isinstance(support_size, bool) or not isinstance(support_size, int) or support_size < 1:
            raise InvalidInputError(f"support_size must be a whole number of 1 or more, got {support_size!r}",
                                    "support_size")
        data["support_size"] = str(support_size)
    return data


def clinical_fields(label_names: dict[int, str] | None, output: str | None) -> dict[str, str]:
    """``label_names`` (label value -> name, for inline support sets) and ``output`` ("dicom-seg": a DICOM SEG
    of a DICOM query) as form fields."""
    data: dict[str, str] = {}
    if label_names:
        data["label_names"] = json.dumps({str(int(k)): str(v) for k, v in label_names.items()})
    if output is not None:
        if output not in ("file", "dicom-seg"):
            raise InvalidInputError(f"output must be 'file' or 'dicom-seg', got {output!r}", "output")
        data["output"] = output
    return data


def volume_fields(support_slices: int | None, skip_margin: float | None, cascade: bool | None,
                  support_positions: list[float] | None = None) -> dict[str, str]:
    """The cost fields of a volume request (None: the service's default), checked before anything is sent;
    ``support_positions``: a 2D support set's relative depth (0-1) per pair, sent as a JSON array.

    Raises:
        InvalidInputError: a value the service would refuse, naming the argument.
    """
    data: dict[str, str] = {}
    if support_slices is not None:
        if isinstance(support_slices, bool) or not isinstance(support_slices, int) or support_slices < 1:
            raise InvalidInputError(f"support_slices must be a whole number of 1 or more, got {support_slices!r}",
                                    "support_slices")
        data["support_slices"] = str(support_slices)
    if skip_margin is not None:
        if isinstance(skip_margin, bool) or not isinstance(skip_margin, int | float) or not 0 <= skip_margin <= 1:
            raise InvalidInputError(f"skip_margin must be a relative depth between 0 and 1 (1: never skip), got "
                                    f"{skip_margin!r}", "skip_margin")
        data["skip_margin"] = repr(float(skip_margin))
    if cascade is not None:
        if not isinstance(cascade, bool):
            raise InvalidInputError(f"cascade must be True or False, got {cascade!r}", "cascade")
        data["cascade"] = "true" if cascade else "false"
    if support_positions is not None:
        values = list(support_positions) if isinstance(support_positions, list | tuple) else [support_positions]
        if not values or any(isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1 for v in values):
            raise InvalidInputError("support_positions must be a list of relative depths between 0 (first slice) and "
                                    f"1 (last), one per support pair, got {support_positions!r}", "support_positions")
        data["support_positions"] = json.dumps([float(v) for v in values])
    return data
