"""The container's entry point run outside Docker: the runtime stage's ENTRYPOINT + CMD with its ENV, its
WORKDIR and the non-root user's HOME, and its HEALTHCHECK command run as Docker would run it.

What differs from a container, and only this: paths (/opt/venv/bin -> this venv's bin, /var/lib/icseg ->
a temporary folder), the port (a free one instead of 8000, which may be taken here) and ICSEG_WEIGHTS
pointing at the tests' tiny network, as `docker run -e ICSEG_WEIGHTS=...` would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from deploykit import dockerfile_stages
from testkit import EXAMPLE
from testkit.processes import Proc, free_port, venv_bin

RUNTIME = dockerfile_stages()[-1]
CONTAINER_PORT = RUNTIME.exec_form("CMD")[-1]


def container_process(tmp: Path, weights: Path, name: str) -> tuple[Proc, int, dict[str, str]]:
    env = RUNTIME.env()
    data_dir = tmp / name / env["ICSEG_DATA_DIR"].strip("/").replace("/", "-")
    data_dir.mkdir(parents=True)
    env.update(
        PATH=env["PATH"].replace("/opt/venv/bin", str(venv_bin())).rstrip(":") + ":" + os.environ["PATH"],
        ICSEG_DATA_DIR=str(data_dir),
        HOME=str(data_dir),  # useradd --home-dir = the data dir; Docker sets HOME from /etc/passwd
        LANG="C.UTF-8",  # the python base image's
        ICSEG_WEIGHTS=str(weights),
    )
    assert RUNTIME.args("WORKDIR")[-1] == RUNTIME.env()["ICSEG_DATA_DIR"]
    port = free_port()
    command = RUNTIME.exec_form("ENTRYPOINT") + RUNTIME.exec_form("CMD")
    command[command.index("--port") + 1] = str(port)
    return Proc(command, tmp / f"{name}.log", env=env, cwd=data_dir), port, env


def healthcheck(port: int, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The HEALTHCHECK's CMD, as Docker runs it inside the container (same env, same user)."""
    _, command = RUNTIME.healthcheck()
    script = command[-1].replace(f":{CONTAINER_PORT}/", f":{port}/")
    assert script != command[-1], "the health check does not name the container's port"
    return subprocess.run([*command[:-1], script], env=env, capture_output=True, text=True, timeout=30)


def test_container_entry_point_serves_and_reports_health(tmp_path, tiny_weights):
    ready, port, env = container_process(tmp_path, tiny_weights, "ready")
    unready, bad_port, bad_env = container_process(tmp_path, tmp_path / "no-such.safetensors", "unready")
    try:
        # Docker's view: unhealthy until /readyz answers 200, then healthy
        deadline = time.monotonic() + 120
        while (result := healthcheck(port, env)).returncode != 0:
            assert ready.proc.poll() is None, ready.log()
            assert time.monotonic() < deadline, f"never healthy: {result.stderr}\n{ready.log()}"
            time.sleep(0.5)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/").headers["content-type"].startswith("text/html")
        manifest = json.loads((EXAMPLE / "manifest.json").read_text())
        files = [("query", (EXAMPLE / manifest["query"]).read_bytes())]
        for pair in manifest["support"]:
            files += [("support_images", (EXAMPLE / pair["image"]).read_bytes()),
                      ("support_masks", (EXAMPLE / pair["mask"]).read_bytes())]
        answer = httpx.post(base + "/segment", files=files, timeout=60)
        assert answer.status_code == 200 and answer.content[:8] == b"\x89PNG\r\n\x1a\n", answer.text

        # without loadable weights the process stays up (liveness) but is not ready: unhealthy
        unready.wait_http(f"http://127.0.0.1:{bad_port}/healthz")
        result = healthcheck(bad_port, bad_env)
        assert result.returncode != 0 and "503" in result.stderr
        body = httpx.get(f"http://127.0.0.1:{bad_port}/readyz").json()
        assert body["error"]["code"] == "model_not_ready" and body["error"]["field"] == "weights"
    finally:
        unready.stop()
        # `docker stop` sends SIGTERM and waits (compose: stop_grace_period 15 s) before SIGKILL
        start = time.monotonic()
        code = ready.stop(grace=15)
    # uvicorn shuts down cleanly, then re-raises SIGTERM to itself (exit -15 here; as PID 1 in a container
    # the re-raised signal is ignored and the exit status is 0)
    assert code in (0, -signal.SIGTERM) and time.monotonic() - start < 15, ready.log()
    assert "Application shutdown complete" in ready.log() and "Traceback" not in ready.log()


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_entry_point_answers_other_subcommands(argv):
    """ENTRYPOINT is `icseg` and CMD only its arguments: `docker run IMAGE serve --help` works."""
    exe = venv_bin() / RUNTIME.exec_form("ENTRYPOINT")[0]
    out = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage: icseg" in out.stdout
