"""docker-compose.yml against the Compose specification's JSON schema, and the promises it makes:
scalable api replicas, one proxy address, shared prompts, a GPU profile, limits that match the app's."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploykit import DEPLOY, ROOT, dockerfile_stages, interpolate, read_env_file

from app.settings import Settings

check_jsonschema = pytest.importorskip("check_jsonschema", reason="dev extra: pip install -e '.[dev]'")

# the Compose specification's schema (compose-spec/compose-spec, Apache-2.0) as vendored by check-jsonschema
SCHEMA_PATH = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
ENV_EXAMPLE = read_env_file(ROOT / ".env.example")


def load_compose(env: dict[str, str]) -> dict:
    return interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), env)


def schema_errors(document: dict) -> list[str]:
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("env", [ENV_EXAMPLE, {}], ids=["with .env.example", "without .env"])
def test_compose_file_follows_the_compose_specification(env):
    document = load_compose(env)
    assert schema_errors(document) == []
    # the validator is not a rubber stamp: a misspelt key and a wrong type are both refused
    broken = copy.deepcopy(document)
    broken["services"]["api"]["replica"] = 2
    broken["services"]["proxy"]["ports"] = "8000:80"
    errors = schema_errors(broken)
    assert any("replica" in e for e in errors) and any(e.startswith("services/proxy/ports") for e in errors), errors


def test_api_replicas_scale_behind_one_proxy_address():
    compose = load_compose(ENV_EXAMPLE)
    services = compose["services"]
    port = dockerfile_stages()[-1].exec_form("CMD")[-1]
    for name in ("api", "api-gpu"):
        api = services[name]
        # `--scale api=N`: no fixed host port, no fixed container name
        assert "ports" not in api and "container_name" not in api, name
        assert api["expose"] == [port]
        assert api["networks"]["default"]["aliases"] == ["icseg-api"]
        assert api["env_file"] == ".env"
        # prompts in the redis service, so that every replica sees every prompt
        assert api["environment"]["ICSEG_REDIS_URL"] == "redis://redis:6379/0"
        assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "profiles" not in services["api"]  # the CPU api starts with a plain `docker compose up`

    proxy = services["proxy"]
    assert proxy["ports"] == [f"{ENV_EXAMPLE['ICSEG_HTTP_PORT']}:80"]
    mounts = dict(volume.split(":")[:2] for volume in proxy["volumes"])
    assert mounts["./deploy/nginx/templates"] == "/etc/nginx/templates"
    template = (DEPLOY / "nginx" / "templates" / "default.conf.template").read_text()
    assert re.search(r"^\s*listen 80;", template, re.M)
    assert f"include {mounts['./deploy/nginx/upstream.conf']};" in template
    upstream = (DEPLOY / "nginx" / "upstream.conf").read_text()
    # both upstream groups follow the alias through Docker's DNS, on the port the image serves
    assert upstream.count(f"server icseg-api:{port} resolve;") == 2
    assert "resolver 127.0.0.11" in upstream

    redis = services["redis"]
    assert "prompts:/data" in redis["volumes"] and "prompts" in compose["volumes"]
    assert "--appendonly" in redis["command"]


def test_gpu_profile_reserves_nvidia_devices():
    services = load_compose(ENV_EXAMPLE)["services"]
    gpu = services["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["ICSEG_DEVICE"] == "cuda"
    assert services["api"]["environment"]["ICSEG_DEVICE"] == "cpu"
    cpu_index = services["api"]["build"]["args"]["TORCH_INDEX_URL"]
    gpu_index = gpu["build"]["args"]["TORCH_INDEX_URL"]
    assert cpu_index.endswith("/whl/cpu") and gpu_index != cpu_index
    assert gpu["image"] != services["api"]["image"]
    # the CPU index is also the Dockerfile's default, so that a plain `docker build .` is the CPU image
    build_args = dockerfile_stages()[0].args("ARG")
    assert f"TORCH_INDEX_URL={cpu_index}" in build_args


def test_compose_health_check_is_the_dockerfiles():
    options, command = dockerfile_stages()[-1].healthcheck()
    api = load_compose(ENV_EXAMPLE)["services"]["api"]["healthcheck"]
    assert api["test"] == ["CMD", *command]
    assert "/readyz" in command[-1]
    for key in ("interval", "timeout", "start_period", "retries"):
        assert str(api[key]) == options[key.replace("_", "-")], key


def test_proxy_limits_match_the_app():
    template = (DEPLOY / "nginx" / "templates" / "default.conf.template").read_text()
    assert re.search(r"^\s*client_max_body_size \$\{ICSEG_MAX_UPLOAD_MB\}m;", template, re.M)
    # nginx's "m" is 1024 * 1024 bytes, as is the app's MB (Settings.max_upload_bytes)
    assert Settings(max_upload_mb=3).max_upload_bytes == 3 * 1024 * 1024
    default_mb = Settings.model_fields["max_upload_mb"].default
    for env in (ENV_EXAMPLE, {}):
        services = load_compose(env)["services"]
        proxy_mb = services["proxy"]["environment"]["ICSEG_MAX_UPLOAD_MB"]
        assert proxy_mb == services["api"]["environment"]["ICSEG_MAX_UPLOAD_MB"]
        assert proxy_mb.isdigit(), "nginx takes whole megabytes"
        assert float(proxy_mb) == float(env.get("ICSEG_MAX_UPLOAD_MB", default_mb))
    assert float(ENV_EXAMPLE["ICSEG_MAX_UPLOAD_MB"]) == default_mb
    # the template's variables pass the nginx image's envsubst filter; nginx's own $variables do not
    filter_ = load_compose({})["services"]["proxy"]["environment"]["NGINX_ENVSUBST_FILTER"]
    assert all(re.search(filter_, name) for name in re.findall(r"\$\{(\w+)\}", template))
    # a synchronous /segment may wait request_timeout_s for the model; the proxy waits longer
    read_timeout = int(re.search(r"proxy_read_timeout (\d+)s;", template).group(1))
    assert read_timeout > Settings.model_fields["request_timeout_s"].default


def test_env_example_names_only_real_settings():
    text = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*(ICSEG_\w+)=", text, re.M))
    compose_names = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    settings = {f"ICSEG_{name.upper()}" for name in Settings.model_fields}
    unknown = names - settings - compose_names
    assert not unknown, f"neither a setting nor used by docker-compose.yml: {unknown}"
    assert {"ICSEG_API_KEYS", "ICSEG_MAX_UPLOAD_MB", "ICSEG_TORCH_THREADS"} <= names


def test_check_override_changes_only_what_a_machine_without_registry_needs():
    """docker-compose.check.yml (scripts/container-check.sh) on top of the shipped file: the merged file is
    still valid, and it differs only in two replicas, the stand-in images and the proxy's start order."""
    shipped = load_compose(ENV_EXAMPLE)
    override = yaml.safe_load((ROOT / "docker-compose.check.yml").read_text())
    assert set(override) == {"services"} and set(override["services"]) == {"api", "redis", "proxy"}
    assert override["services"]["api"] == {"scale": 2}
    assert set(override["services"]["redis"]) == {"image"}
    assert set(override["services"]["proxy"]) == {"image", "depends_on"}
    for name in ("redis", "proxy"):
        stand_in = override["services"][name]["image"]
        assert stand_in.startswith("localhost/") and stand_in != shipped["services"][name]["image"]
    merged = copy.deepcopy(shipped)
    for name, service in override["services"].items():
        merged["services"][name].update(service)
    assert schema_errors(merged) == []
    # the stand-in proxy rewrites exactly one thing of the shipped upstream file: " resolve" on its servers
    entrypoint = (DEPLOY / "podman" / "nginx-entrypoint.sh").read_text()
    assert "sed -e 's/ resolve;$/;/'" in entrypoint
    upstream = (DEPLOY / "nginx" / "upstream.conf").read_text()
    rewritten = re.sub(r" resolve;$", ";", upstream, flags=re.M)
    assert [a for a, b in zip(upstream.splitlines(), rewritten.splitlines()) if a != b] == [
        "    server icseg-api:8000 resolve;"] * 2
