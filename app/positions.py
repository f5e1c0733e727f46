"""``support_positions`` on /segment and /jobs: where each 2D support pair sits along a volume (relative
depth, 0 the first slice, 1 the last), so that query slices far from every pair holding a label are skipped
(``model.volume.predict_with_2d_support``). Parsed and checked before any model work, and before a job's 202."""

from __future__ import annotations

import json
import math

from app.errors import ApiError

EXAMPLE = "[0.42, 0.5, 0.61]"


def parse_support_positions(raw: str | None) -> tuple[float, ...] | None:
    """A JSON array of numbers in [0, 1], one per support pair, or None (unset / empty)."""
    if raw is None or not raw.strip():
        return None
    try:
        parsed = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(f"support_positions must be a JSON array of relative depths such as {EXAMPLE}",
                       field="support_positions", code="invalid_request") from exc
    if not isinstance(parsed, list) or not parsed:
        raise ApiError(f"support_positions must be a non-empty JSON array such as {EXAMPLE}, one per support pair",
                       field="support_positions", code="invalid_request")
    for value in parsed:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not 0 <= value <= 1:
            raise ApiError(f"support_positions must hold relative depths between 0 (first slice) and 1 (last), "
                           f"got {value!r}", field="support_positions", code="invalid_input")
    return tuple(float(v) for v in parsed)


def check_support_positions(positions: tuple[float, ...] | None, is_volume: bool, three_d: bool,
                            support_size: int) -> None:
    """Positions fit the request: a volume query, a 2D support set, one value per pair the query uses."""
    if positions is None:
        return
    if not is_volume:
        raise ApiError("support_positions places 2D support pairs along a volume's slices; this query is 2D",
                       field="support_positions", code="invalid_request")
    if three_d:
        raise ApiError("support_positions is for 2D support pairs; 3D support volumes carry their own positions",
                       field="support_positions", code="invalid_request")
    if len(positions) != support_size:
        raise ApiError(f"support_positions has {len(positions)} values for the {support_size} support pairs the query "
                       "uses; give one relative depth per pair, in their order (with select=all)",
                       field="support_positions", code="invalid_request")
