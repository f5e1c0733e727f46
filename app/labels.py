"""Label names: checked where they come in (``/prompts`` and inline ``label_names`` on /segment and /jobs)."""

from __future__ import annotations

import json
import re

from app.errors import ApiError

# names are shown, never used as paths; still: letters, digits and a little punctuation only
_NAME = re.compile(r"^[\w][\w .,:()+\-]{0,99}$")


def check_name(value: str, field: str) -> str:
    value = value.strip()
    if not _NAME.fullmatch(value) or ".." in value:
        raise ApiError(f"{field} must be 1-100 letters, digits, spaces or . , : ( ) + - _ (no '..', no slashes)",
                       field=field, code="invalid_name")
    return value


def parse_label_names(raw: str | None, labels: tuple[int, ...]) -> dict[str, str]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: hostile nesting like [[[[...]]]]
        raise ApiError('label_names must be a JSON object such as {"1": "liver", "2": "spleen"}',
                       field="label_names", code="invalid_request") from exc
    if not isinstance(parsed, dict):
        raise ApiError('label_names must be a JSON object such as {"1": "liver"}', field="label_names",
                       code="invalid_request")
    names = {}
    for key, value in parsed.items():
        if not str(key).isdigit() or int(key) not in labels:
            raise ApiError(f"label_names has label {key!r}, which no support mask holds (labels: {list(labels)})",
                           field="label_names", code="invalid_input")
        if not isinstance(value, str):
            raise ApiError("label_names values must be strings", field="label_names", code="invalid_request")
        names[str(int(key))] = check_name(value, f"label_names.{key}")
    return names
