"""Helpers of the deployment and viewer tests: the Dockerfile and compose files read as data, and real
processes (`icseg serve`, redis-server, nginx) on loopback ports. No Docker engine is needed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from model.config import NetworkConfig
from model.network import build_network
from model.weights import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLE = ROOT / "app" / "static" / "example"


# -- files read as data -------------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage of a Dockerfile: its base and instructions, continuation lines joined."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]

    def env(self) -> dict[str, str]:
        """ENV as the container sees it (``$VAR`` expanded against earlier ENV lines, as Docker does)."""
        env: dict[str, str] = {}
        for line in self.args("ENV"):
            for item in shlex.split(line):
                key, _, value = item.partition("=")
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
        return env

    def exec_form(self, keyword: str) -> list[str]:
        """The JSON (exec) form of the last ENTRYPOINT or CMD."""
        return json.loads(self.args(keyword)[-1])

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options such as interval, the CMD in exec form)."""
        line = self.args("HEALTHCHECK")[-1]
        options, _, command = line.partition(" CMD ")
        flags = dict(re.findall(r"--([\w-]+)=(\S+)", options))
        return flags, json.loads(command)


def dockerfile_stages(path: Path = ROOT / "Dockerfile") -> list[Stage]:
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            parts = rest.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return stages


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blank lines skipped), as compose reads them."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}`` in every string of a loaded file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        if op in (":-", ":?"):
            unset = not current
        else:
            unset = current is None
        if unset and op and op.endswith("?"):
            raise ValueError(f"{name} is required: {default}")
        return (default or "") if unset else current

    return _INTERPOLATION.sub(substitute, value)


def render_template(text: str, env: dict[str, str], pattern: str = r"^ICSEG_") -> str:
    """What the nginx image's entrypoint does with envsubst: ``${VAR}`` of defined variables matching the
    filter are replaced, everything else (nginx's own ``$variables``) is left alone."""

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        return env[name] if name in env and re.search(pattern, name) else match.group(0)

    return re.sub(r"\$\{(\w+)\}", substitute, text)


# -- processes -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without ICSEG_* (a developer's settings must not leak in), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICSEG_")}
    env.update(extra)
    return env


def venv_bin() -> Path:
    return Path(sys.executable).parent


def write_tiny_weights(path: Path) -> Path:
    """The tests' tiny seeded network (random weights: shapes, not quality)."""
    torch.manual_seed(0)
    net = build_network(NetworkConfig(encoder_features=(8, 8, 8, 8), decoder_features=(8, 8, 8), size=32))
    save_checkpoint(net, path, metadata={"source": "seeded random test weights", "licence": "none (tests)"})
    return path


def find_exe(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name,) if p.exists()), None)


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
                raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(url, timeout=2).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
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


def icseg_serve(port: int, env: dict[str, str], log_path: Path) -> Proc:
    """``icseg serve`` on 127.0.0.1:port with exactly ``env`` on top of a clean environment."""
    cmd = [str(venv_bin() / "icseg"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Proc(cmd, log_path, env=base_env(**env), cwd=log_path.parent)


def redis_server(workdir: Path) -> tuple[Proc, str]:
    exe = find_exe("redis-server")
    port = free_port()
    proc = Proc([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(workdir)], workdir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.proc.poll() is not None:
                proc.stop()
                raise RuntimeError(f"redis-server did not start:\n{proc.log()}") from None
            time.sleep(0.05)
    client.close()
    return proc, url
