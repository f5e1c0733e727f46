"""Schema fuzzing: schemathesis generates requests from the app's OpenAPI schema and sends them to a real
`icseg serve` (with an API key); no answer may be a 5xx or break the schema it documents.

Bounded for CI: FUZZ_MAX_EXAMPLES (default 10) examples per operation and per generation mode (schema-valid
and schema-violating data), hypothesis' generate phase only, seeded (FUZZ_SEED). The long run reported in
docs/reliability.md is the same test with a larger FUZZ_MAX_EXAMPLES:

    FUZZ_MAX_EXAMPLES=100 FUZZ_SEED=1 pytest tests/system/reliability/test_fuzz.py -q -s

File fields are drawn either as schemathesis generates them (random strings) or, half of the time, from a
pool of real and damaged images, masks and volumes, and ids from real prompts and jobs, so that the
fuzzer also reaches decoding, the model and the success answers instead of stopping at the first 4xx.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from reliabilitykit import nifti_declaring, png_declaring, start_server
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from testkit.inputs import ball_volume, disk_pair, nifti, png, support_files

FORM_OPTIONS = ("threshold", "ensemble", "axis", "output", "name", "label_names")
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "10"))
SEED = int(os.environ.get("FUZZ_SEED", "0"))
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ANSWER_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
                 response_schema_conformance]
CHECKS = [*ANSWER_CHECKS, negative_data_rejection, missing_required_header, ignored_auth]


def _file_pool() -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(5)
    images, masks = [], []
    for size in ((48, 56), (32, 32), (1, 1), (7, 300)):
        image, mask = disk_pair(rng, size) if min(size) > 4 else (np.full(size, 9, np.uint8), np.ones(size, np.uint8))
        images.append(png(image))
        masks.append(png(mask))
    volume, volume_mask = ball_volume(rng, (20, 18, 6))
    images += [nifti(volume), png_declaring(60_000, 60_000), nifti_declaring((9000, 9000, 9000)), b"", b"\x89PNG"]
    masks += [nifti(volume_mask), png(np.zeros((48, 56), np.uint8)), png(np.full((48, 56), 300, np.uint16))]
    return images, masks


@pytest.fixture(scope="module")
def fuzz_target(tiny_weights, tmp_path_factory):
    """The server, its schema and real ids (prompts and a finished job) for the fuzzer to use."""
    folder = tmp_path_factory.mktemp("fuzz")
    server = start_server(folder, tiny_weights, ICSEG_API_KEYS=KEY, ICSEG_MAX_UPLOAD_MB="8")
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        prompts = [http.post("/prompts", files=support_files(rng, 3)).json()["id"] for _ in range(4)]
        volume, _ = ball_volume(rng, (20, 18, 6))
        jobs = [http.post("/jobs", files=[("query", ("q.nii.gz", nifti(volume)))], data={"prompt_id": prompts[0]})
                .json()["id"] for _ in range(3)]
        deadline = time.monotonic() + 60
        while any(http.get(f"/jobs/{j}").json()["status"] != "done" for j in jobs) and time.monotonic() < deadline:
            time.sleep(0.1)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", headers=AUTH)
    try:
        yield {"server": server, "schema": schema, "ids": {"prompt_id": prompts, "job_id": jobs}}
    finally:
        server.stop()


def _steer(case, data: st.DataObject, ids: dict[str, list[str]], pool: tuple[list[bytes], list[bytes]]):
    """Half of the time, real ids in the path and real files in the form, where the generator put random values.

    Returns the (files, form fields) to send instead of the case's body, or None to send the case as it is.
    Sent by hand: schemathesis serialises the repeated file fields (``anyOf: [array of binary, null]``) as
    text fields, which only ever reaches the 422 of FastAPI's form parsing.
    """
    images, masks = pool
    for name in list(case.path_parameters or {}):
        if name in ids and data.draw(st.booleans(), label=f"real {name}"):
            case.path_parameters[name] = data.draw(st.sampled_from(ids[name]))
    if case.operation.path not in ("/segment", "/jobs", "/prompts") or case.operation.method.upper() != "POST":
        return None
    if not isinstance(case.body, dict) or not data.draw(st.booleans(), label="real files"):
        return None
    # the generated options (valid ones in positive mode), a real prompt or real support files
    form = {k: str(v) for k, v in case.body.items() if k in FORM_OPTIONS and isinstance(v, str | int | float)}
    files = []
    if case.operation.path != "/prompts":
        files.append(("query", ("query", data.draw(st.sampled_from(images)))))
    count = data.draw(st.integers(0, 3))
    for i in range(count):
        files.append(("support_images", (f"s{i}", data.draw(st.sampled_from(images)))))
        files.append(("support_masks", (f"m{i}", data.draw(st.sampled_from(masks)))))
    if count == 0 or data.draw(st.integers(0, 9)) == 0:  # sometimes both: a conflict the server must name
        form["prompt_id"] = data.draw(st.sampled_from(ids["prompt_id"]))
    return files, form


def test_fuzz_the_openapi_schema(fuzz_target):
    server, schema, ids = fuzz_target["server"], fuzz_target["schema"], fuzz_target["ids"]
    pool = _file_pool()
    per_operation: dict[str, Counter[int]] = {}
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # deletes last: the real ids serve the rest
    assert len(operations) >= 13
    started = time.monotonic()
    for operation in operations:
        for mode in GenerationMode:

            @seed(SEED)
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
            def run(case, data):
                steered = _steer(case, data, ids, pool)
                if steered is None:
                    response, checks = case.call(base_url=server.url, headers=AUTH, timeout=120), CHECKS
                else:  # the checks that judge the answer alone: the request is no longer the generated one
                    files, form = steered
                    response = httpx.request(case.method, server.url + case.formatted_path, files=files, data=form,
                                             headers=AUTH, timeout=120)
                    response.request.read()  # schemathesis reads the request's body for its report
                    checks = ANSWER_CHECKS
                name = f"{case.operation.method.upper()} {case.operation.path}"
                per_operation.setdefault(name, Counter())[response.status_code] += 1
                statuses[response.status_code] += 1
                case.validate_response(response, checks=checks, headers=AUTH)

            try:
                run()
            except Unsatisfiable:  # nothing to violate: an operation without parameters or body
                assert mode == GenerationMode.NEGATIVE and not operation.body and not operation.path_parameters
    total = sum(statuses.values())
    print(f"\nfuzzing: {total} cases in {time.monotonic() - started:.0f} s, {MAX_EXAMPLES} examples per operation and"
          f" mode, seed {SEED}; statuses {dict(sorted(statuses.items()))}")
    for name, counter in per_operation.items():
        print(f"  {name:<28} {sum(counter.values()):>5}  {dict(sorted(counter.items()))}")
    assert total >= len(operations) * MAX_EXAMPLES  # both modes ran (some draws repeat, so not 2x exactly)
    assert not [s for s in statuses if s >= 500]
    assert statuses[200] + statuses[201] + statuses[202] + statuses[204] > 0  # the pool reached the success paths
    assert server.proc.poll() is None and "Traceback" not in server.log()
