"""Real processes on loopback ports: `icseg serve`, redis-server, anything else with a log file."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from testkit import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ICSEG_* (a developer's settings must not leak in), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICSEG_")}
    env.update(extra)
    return env


def venv_bin() -> Path:
    return Path(sys.executable).parent


def icseg_command() -> list[str]:
    """The `icseg` console script of this interpreter's environment (``python -m cli`` without one)."""
    exe = venv_bin() / "icseg"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cli"]


def find_exe(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name,) if p.exists()), None)


def require_exe(name: str) -> str:
    """The path of a system program the test needs; skips the test where it is not installed."""
    exe = find_exe(name)
    if exe is None:
        pytest.skip(f"{name} is not installed; scripts/install-system-deps.sh installs it")
    return exe


class Proc:
    """A child process with its output in a log file; ``stop`` sends SIGTERM as ``docker stop`` does."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float = 120.0, status: int = 200) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{Path(self.cmd[0]).name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(url, timeout=2).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{url} did not answer {status} within {timeout} s:\n{self.log()}")

    def stop(self, grace: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class Server(Proc):
    """A real `icseg serve` on 127.0.0.1:``port`` (a free one by default) with exactly ``env`` on top of a
    clean environment."""

    def __init__(self, env: dict[str, str], log_path: Path, *, port: int | None = None, cwd: Path = ROOT):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [*icseg_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__(command, log_path, env=clean_env(**env), cwd=cwd)

    def wait_ready(self, timeout: float = 120.0) -> None:
        self.wait_http(self.url + "/readyz", timeout)


class RedisServer(Proc):
    """A throw-away redis-server on 127.0.0.1:``port`` (a free one by default) that saves nothing."""

    def __init__(self, exe: str, workdir: Path, *, port: int | None = None):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        super().__init__([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--dir", str(workdir)], workdir / "redis.log")
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start:\n{self.log()}") from None
                time.sleep(0.05)
        client.close()
