"""The Dockerfile, compose and nginx files read as data, as Docker and compose read them (the processes the
deployment tests start are testkit.processes'). No Docker engine is needed."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from testkit import ROOT

DEPLOY = ROOT / "deploy"


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
