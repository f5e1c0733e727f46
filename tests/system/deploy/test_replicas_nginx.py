"""Two `icseg serve` replicas behind nginx, sharing a real redis-server: the compose deployment without
Docker. nginx runs the repository's own proxy config (deploy/nginx); only what Docker provides is swapped:
the listen address and, in place of the Docker DNS name, the two loopback replicas."""

from __future__ import annotations

import getpass
import json
import re
import time
from pathlib import Path

import httpx
from deploykit import DEPLOY, render_template
from testkit import EXAMPLE
from testkit.processes import Proc, Server, free_port, require_exe

MAX_UPLOAD_MB = 1  # small, so that the proxy's limit is cheap to cross


def nginx_config(tmp: Path, listen_port: int, replicas: list[int]) -> Path:
    """deploy/nginx rendered as the nginx image would, pointed at loopback replicas, in a private prefix."""
    template = (DEPLOY / "nginx" / "templates" / "default.conf.template").read_text()
    server = render_template(template, {"ICSEG_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB)})
    assert server.count("include /etc/nginx/icseg/upstream.conf;") == 1 and server.count("listen 80;") == 1
    server = server.replace("include /etc/nginx/icseg/upstream.conf;", f"include {tmp}/upstream.conf;")
    server = server.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    upstream = (DEPLOY / "nginx" / "upstream.conf").read_text()
    # Docker's DNS and `resolve` (nginx >= 1.27.3; Debian has 1.22) are what cannot run here
    upstream, resolvers = re.subn(r"^resolver .*\n", "", upstream, flags=re.M)
    servers = "".join(f"server 127.0.0.1:{port};\n    " for port in replicas).rstrip()
    upstream, groups = re.subn(r"server icseg-api:8000 resolve;", servers, upstream)
    assert resolvers == 1 and groups == 2
    (tmp / "upstream.conf").write_text(upstream)
    (tmp / "default.conf").write_text(server)
    temp_paths = "".join(f"{kind}_temp_path {tmp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                           "uwsgi", "scgi"))
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"user {getpass.getuser()};\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n access_log {tmp}/access.log;\n{temp_paths} include {tmp}/default.conf;\n}}\n"
    )
    return conf


def example_files() -> tuple[list[tuple], bytes]:
    manifest = json.loads((EXAMPLE / "manifest.json").read_text())
    support = []
    for pair in manifest["support"]:
        support += [("support_images", (pair["image"], (EXAMPLE / pair["image"]).read_bytes(), "image/png")),
                    ("support_masks", (pair["mask"], (EXAMPLE / pair["mask"]).read_bytes(), "image/png"))]
    return support, (EXAMPLE / manifest["query"]).read_bytes()


def test_prompt_created_on_one_replica_is_served_through_the_proxy(tmp_path, tiny_weights, redis_url):
    nginx = require_exe("nginx")
    ports = [free_port(), free_port()]
    replicas = []
    for name, port in zip("ab", ports):
        (tmp_path / name).mkdir()
        env = {"ICSEG_WEIGHTS": str(tiny_weights), "ICSEG_REDIS_URL": redis_url,
               "ICSEG_DATA_DIR": str(tmp_path / name / "data"), "ICSEG_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB)}
        replicas.append(Server(env, tmp_path / name / "serve.log", port=port, cwd=tmp_path / name))
    proxy_port = free_port()
    conf = nginx_config(tmp_path, proxy_port, ports)
    proxy = Proc([nginx, "-e", "stderr", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                 tmp_path / "nginx.log")
    a, b = (f"http://127.0.0.1:{port}" for port in ports)
    via = f"http://127.0.0.1:{proxy_port}"
    try:
        for replica, url in zip(replicas, (a, b)):
            replica.wait_http(url + "/readyz")
        proxy.wait_http(via + "/readyz", timeout=30)
        support, query = example_files()

        # a prompt stored through replica a ...
        created = httpx.post(a + "/prompts", files=support, data={"name": "example"}, timeout=60)
        assert created.status_code == 201, created.text
        prompt_id = created.json()["id"]
        assert httpx.get(b + f"/prompts/{prompt_id}").status_code == 200  # shared through redis

        # ... answers through the proxy, whichever replica nginx picks; request ids pass through
        expected = httpx.post(b + "/segment", files={"query": query}, data={"prompt_id": prompt_id}, timeout=60)
        assert expected.status_code == 200, expected.text
        ids = [f"proxy-{i}" for i in range(4)]
        for request_id in ids:
            answer = httpx.post(via + "/segment", files={"query": query}, data={"prompt_id": prompt_id},
                                headers={"X-Request-ID": request_id}, timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-request-id"] == request_id
            assert answer.content == expected.content
        deadline = time.monotonic() + 15  # a replica writes its access line just after it answers
        while True:
            served = [[i for i in ids if f"request_id={i} " in r.log()] for r in replicas]
            if sorted(served[0] + served[1]) == ids or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(served) and sorted(served[0] + served[1]) == ids, served

        # a job's status and result come from the replica that took it (hash on the client address)
        job = httpx.post(via + "/jobs", files={"query": query}, data={"prompt_id": prompt_id}, timeout=60)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + 60
        for _ in range(4):  # more requests than replicas: a round robin would reach the other one
            status = httpx.get(via + f"/jobs/{job_id}")
            assert status.status_code == 200, f"the proxy sent the job's status request elsewhere: {status.text}"
        while status.json()["status"] != "done":
            assert status.json()["status"] in ("queued", "running") and time.monotonic() < deadline, status.text
            time.sleep(0.1)
            status = httpx.get(via + f"/jobs/{job_id}")
        result = httpx.get(via + f"/jobs/{job_id}/result")
        assert result.status_code == 200 and result.content == expected.content

        # the proxy refuses what the app would refuse, in the app's error format; below the limit passes on
        limit = MAX_UPLOAD_MB * 1024 * 1024
        too_big = httpx.post(via + "/segment", files={"query": ("q.png", b"\0" * (limit + 1024))}, timeout=60)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "too_large" and "ICSEG_MAX_UPLOAD_MB" in too_big.text
        below = httpx.post(via + "/segment", files={"query": ("q.png", b"\0" * (limit - 4096))}, timeout=60)
        # (the app read the whole body and found the support set missing)
        assert below.status_code == 422 and below.json()["error"]["code"] == "missing_support", below.text

        # one replica gone: the proxy skips it (connection refused) and the prompt still answers
        replicas[1].stop()
        for _ in range(4):
            assert httpx.get(via + f"/prompts/{prompt_id}").status_code == 200
    finally:
        proxy.stop()
        for replica in replicas:
            replica.stop()
    # and with no replica at all: a 503 in the app's format, not nginx's HTML page
    proxy = Proc([nginx, "-e", "stderr", "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                 tmp_path / "nginx-2.log")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                gone = httpx.get(via + "/readyz", timeout=5)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, proxy.log()
                time.sleep(0.1)
        assert gone.status_code == 503 and gone.json()["error"]["code"] == "unavailable"
        assert gone.headers["retry-after"] == "5"
    finally:
        proxy.stop()
