#!/usr/bin/env bash
# The deployment run for real, with podman, on a base made here (no registry is needed):
#   scripts/container-check.sh            the image, then the compose stack
#   scripts/container-check.sh image      build icseg:cpu and run it (make test)
#   scripts/container-check.sh compose    build it (cached) and bring up the stack (make test-deploy)
#
# image:   installs podman & co. (scripts/install-system-deps.sh --containers); makes the Debian base once
#          (debootstrap + podman import) and a Python 3.11 base on it; fetches the wheels of torch and the
#          other packages into deploy/wheels/; builds icseg:cpu (--format docker, so that HEALTHCHECK is kept); runs it and
#          checks: /readyz 200 within the health check's start period, POST /segment on the shipped example
#          prompt gives a mask of the query's size, the process runs as uid 10001, the HEALTHCHECK says
#          healthy; prints the image's size.
# compose: local stand-ins for redis and nginx (deploy/podman/), docker-compose.yml as shipped plus
#          docker-compose.check.yml (two api replicas, the stand-in images), `podman-compose up -d`; checks:
#          a prompt stored through the proxy answers from both replicas, /jobs requests stay on the replica
#          that took the job, `down` leaves nothing.
# Everything it starts is removed on exit, failed or not. Caches: the base images and build layers in
# podman's storage, the wheels in /var/cache/icseg-container/wheels (linked into deploy/wheels/, gitignored). Builds and containers run at nice 19.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
part=${1:-all}
case "$part" in all|image|compose) ;; *) echo "usage: $0 [all|image|compose]" >&2; exit 2 ;; esac

DEBIAN_IMAGE=localhost/debian:bookworm-min
PYTHON_IMAGE=localhost/icseg-python:3.11-bookworm
REDIS_IMAGE=localhost/icseg-redis:7.0-bookworm
NGINX_IMAGE=localhost/icseg-nginx:1.22-bookworm
IMAGE=icseg:cpu
TORCH=torch==2.13.0
UID_EXPECTED=10001
PROJECT=icseg-check-$$
NAME=icseg-check-$$
RUNTIME=/usr/sbin/runc
EXAMPLE=$ROOT/app/static/example
# podman-compose 1.6.0 (install-system-deps.sh); Debian's 1.0.3 cannot read docker-compose.yml
PODMAN_COMPOSE=/var/cache/icseg-container/podman-compose/bin/podman-compose
PODMAN=(nice -n 19 podman --runtime "$RUNTIME")
WORK=$(mktemp -d /tmp/icseg-container-check.XXXXXX)
started=$(date +%s)

log() { printf '[container-check %4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }
fail() { log "FAILED: $*"; exit 1; }

cleanup() {
  rc=$?
  set +e
  if podman container exists "$NAME" 2>/dev/null; then
    [ "$rc" -ne 0 ] && { log "logs of $NAME:"; podman logs --tail 40 "$NAME" 2>&1; }
    podman rm -f -t 5 "$NAME" >/dev/null 2>&1
  fi
  if [ -e "$WORK/compose-up" ]; then
    if [ "$rc" -ne 0 ]; then
      for c in $(podman ps -a -q --filter "label=io.podman.compose.project=$PROJECT"); do
        log "logs of $(podman inspect --format '{{.Name}}' "$c"):"; podman logs --tail 20 "$c" 2>&1
      done
    fi
    (cd "$WORK/project" && "$PODMAN_COMPOSE" -p "$PROJECT" -f docker-compose.yml -f docker-compose.check.yml \
      down -v >/dev/null 2>&1)
    podman ps -a -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman rm -f -t 5 >/dev/null 2>&1
    podman network rm -f "${PROJECT}_default" >/dev/null 2>&1
    podman volume rm -f "${PROJECT}_prompts" >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# PNG width x height from its IHDR chunk (no imaging library needed on the host)
png_size() { python3 -c 'import struct, sys; d = open(sys.argv[1], "rb").read(24)
assert d[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"; print("%dx%d" % struct.unpack(">II", d[16:24]))' "$1"; }

# curl -F arguments of the example's support set (app/static/example/manifest.json)
support_form() {
  python3 -c 'import json, sys; m = json.load(open(sys.argv[1] + "/manifest.json"))
for p in m["support"]: print("-Fsupport_images=@%s/%s\n-Fsupport_masks=@%s/%s" % (sys.argv[1], p["image"], sys.argv[1], p["mask"]))' "$EXAMPLE"
}
query_file() { python3 -c 'import json, sys; print(sys.argv[1] + "/" + json.load(open(sys.argv[1] + "/manifest.json"))["query"])' "$EXAMPLE"; }

# wait_ready URL SECONDS: poll until 200; prints the seconds it took
wait_ready() {
  local url=$1 limit=$2 t0=$SECONDS
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 200 ]; do
    [ $(( SECONDS - t0 )) -ge "$limit" ] && return 1
    sleep 1
  done
  echo $(( SECONDS - t0 ))
}

# -- the engine, the bases, the torch wheel, the image -------------------------------------------------
log "system packages (scripts/install-system-deps.sh --containers)"
./scripts/install-system-deps.sh --containers

if ! podman image exists "$DEBIAN_IMAGE"; then
  log "making $DEBIAN_IMAGE with debootstrap (once; cached in podman's storage)"
  rootfs=$WORK/rootfs
  nice -n 19 debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
  # slim, as Debian's -slim images are: no downloaded .debs, package lists, docs, man pages or
  # translations, now or in what is installed on top
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    >"$rootfs/etc/dpkg/dpkg.cfg.d/icseg-slim"
  printf '%s\n' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' >"$rootfs/etc/apt/apt.conf.d/icseg-slim"
  find "$rootfs"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | nice -n 19 podman import - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi
build() {  # build TAG CONTEXT [podman build options...]: layers cached between runs
  local tag=$1 context=$2; shift 2
  "${PODMAN[@]}" build --format docker --network host --layers -t "$tag" "$@" "$context" >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; fail "podman build $tag"; }
}
log "base images: $PYTHON_IMAGE"
build "$PYTHON_IMAGE" deploy/podman -f deploy/podman/python.Containerfile --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE"

# every Python package of the image as a wheel, so that the build reaches no index (this host's pip
# does, through its own configuration); downloaded again only when pyproject's dependencies change, into a
# cache outside the checkout, then linked into deploy/wheels/ (gitignored)
WHEELS_CACHE=/var/cache/icseg-container/wheels
python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
  >"$WORK/requirements.txt"
echo "setuptools>=69" >>"$WORK/requirements.txt"  # builds the package (pyproject's build-system)
if ! cmp -s "$WORK/requirements.txt" "$WHEELS_CACHE/.requirements.txt"; then
  log "wheels into $WHEELS_CACHE (pip download: $TORCH without dependencies, then everything)"
  rm -rf "$WHEELS_CACHE" && mkdir -p "$WHEELS_CACHE"
  # the image's own interpreter where the host has it (Debian's 3.11.2), so that markers such as
  # python_full_version < "3.11.3" resolve as in the image
  pip_python=python3; [ -x /usr/bin/python3.11 ] && /usr/bin/python3.11 -m pip --version >/dev/null 2>&1 \
    && pip_python=/usr/bin/python3.11
  "$pip_python" -m pip download --quiet --no-deps "$TORCH" -d "$WHEELS_CACHE" 2>"$WORK/pip.log" \
    && "$pip_python" -m pip download --quiet -r "$WORK/requirements.txt" -d "$WHEELS_CACHE" 2>>"$WORK/pip.log" \
    || { grep -v '^WARNING: Location' "$WORK/pip.log" | tail -20; fail "pip download"; }
  cp "$WORK/requirements.txt" "$WHEELS_CACHE/.requirements.txt"
fi
rm -f deploy/wheels/*.whl
cp -l "$WHEELS_CACHE"/*.whl deploy/wheels/ 2>/dev/null || cp "$WHEELS_CACHE"/*.whl deploy/wheels/

t0=$SECONDS
log "building $IMAGE (podman build --format docker; packages from deploy/wheels/)"
build "$IMAGE" . --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg PACKAGES_FROM=wheels
build_s=$(( SECONDS - t0 ))
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE in ${build_s}s: $size bytes ($(( size / 1000000 )) MB)"

start_period_s=$(podman image inspect --format '{{.Config.Healthcheck.StartPeriod.Seconds}}' "$IMAGE" 2>/dev/null || true)
start_period_s=${start_period_s%.*}
[ "${start_period_s:-0}" -gt 0 ] || fail "the image has no HEALTHCHECK (built without --format docker?)"

# -- the image, run --------------------------------------------------------------------------------------
if [ "$part" != compose ]; then
  port=$(free_port)
  log "running $IMAGE as $NAME on 127.0.0.1:$port"
  "${PODMAN[@]}" run -d --name "$NAME" -p "127.0.0.1:$port:8000" "$IMAGE" >/dev/null
  url=http://127.0.0.1:$port
  ready_s=$(wait_ready "$url/readyz" "$start_period_s") \
    || fail "/readyz not 200 within the start period (${start_period_s}s): $(curl -s "$url/readyz")"
  log "/readyz 200 after ${ready_s}s (start period ${start_period_s}s)"

  mapfile -t support < <(support_form)
  query=$(query_file)
  code=$(curl -s -o "$WORK/mask.png" -w '%{http_code}' "${support[@]}" -F "query=@$query" "$url/segment")
  [ "$code" = 200 ] || fail "POST /segment: $code $(cat "$WORK/mask.png")"
  [ "$(png_size "$WORK/mask.png")" = "$(png_size "$query")" ] || fail "the mask is not the query's size"
  log "POST /segment on the example prompt: a $(png_size "$WORK/mask.png") PNG mask ($(stat -c %s "$WORK/mask.png") bytes)"

  uid=$(podman exec "$NAME" sh -c 'awk "/^Uid:/ {print \$2}" /proc/1/status')
  [ "$uid" = "$UID_EXPECTED" ] || fail "the server runs as uid $uid, not $UID_EXPECTED"
  log "the server (pid 1: $(podman exec "$NAME" cat /proc/1/cmdline | tr '\0' ' ')) runs as uid $uid"

  # podman runs health checks from systemd timers, which a host without systemd lacks: run the image's
  # HEALTHCHECK command the way the timer would, and read the state podman records
  podman healthcheck run "$NAME" >/dev/null || fail "HEALTHCHECK failed"
  health=$(podman inspect --format '{{.State.Health.Status}}' "$NAME")
  [ "$health" = healthy ] || fail "health status: $health"
  log "HEALTHCHECK: $health"
  podman rm -f -t 10 "$NAME" >/dev/null
  log "image: OK ($IMAGE $(podman images --format '{{.Size}}' "$IMAGE"), built in ${build_s}s, ready in ${ready_s}s)"
fi

# -- the compose stack ----------------------------------------------------------------------------------
if [ "$part" != image ]; then
  log "stand-ins: $REDIS_IMAGE, $NGINX_IMAGE (Debian's redis-server and nginx)"
  build "$REDIS_IMAGE" deploy/podman -f deploy/podman/redis.Containerfile --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE"
  build "$NGINX_IMAGE" deploy/podman -f deploy/podman/nginx.Containerfile --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE"

  # a fresh project folder, as a user's clone would be: the shipped compose file, its nginx files and
  # .env from .env.example (a .env of this checkout, with its keys, is left alone)
  project=$WORK/project
  mkdir -p "$project"
  cp docker-compose.yml docker-compose.check.yml "$project/"
  cp -r deploy "$project/deploy"
  rm -f "$project"/deploy/wheels/*.whl
  port=$(free_port)
  sed "s/^ICSEG_HTTP_PORT=.*/ICSEG_HTTP_PORT=$port/" .env.example >"$project/.env"
  compose=(nice -n 19 "$PODMAN_COMPOSE" -p "$PROJECT" -f docker-compose.yml -f docker-compose.check.yml)
  touch "$WORK/compose-up"
  log "podman-compose up -d (project $PROJECT, two api replicas: scale 2, proxy on 127.0.0.1:$port)"
  (cd "$project" && "${compose[@]}" up -d --no-build >"$WORK/compose.log" 2>&1) \
    || { tail -40 "$WORK/compose.log"; fail "podman-compose up"; }
  mapfile -t replicas < <(podman ps --filter "label=io.podman.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=api" --format '{{.Names}}' | sort)
  [ "${#replicas[@]}" = 2 ] || fail "expected 2 api replicas, found: ${replicas[*]}"
  via=http://127.0.0.1:$port
  t0=$SECONDS
  for r in "${replicas[@]}"; do
    until podman exec "$r" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)" \
      >/dev/null 2>&1; do
      # two replicas load the model at once on a shared CPU: twice the start period for the pair
      [ $(( SECONDS - t0 )) -ge $(( 2 * start_period_s )) ] && fail "$r not ready within $(( 2 * start_period_s ))s"
      sleep 2
    done
  done
  wait_ready "$via/readyz" 30 >/dev/null || fail "the proxy does not answer /readyz"
  log "both replicas ready after $(( SECONDS - t0 ))s: ${replicas[*]}"

  mapfile -t support < <(support_form)
  query=$(query_file)
  created=$(curl -s -w '\n%{http_code}' "${support[@]}" -F name=example "$via/prompts")
  [ "$(tail -1 <<<"$created")" = 201 ] || fail "POST /prompts through the proxy: $created"
  prompt_id=$(head -1 <<<"$created" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  log "prompt $prompt_id stored through the proxy"
  for i in 1 2 3 4; do
    code=$(curl -s -o "$WORK/mask-$i.png" -w '%{http_code}' -H "X-Request-ID: check-$i" -F "query=@$query" \
      -F "prompt_id=$prompt_id" "$via/segment")
    [ "$code" = 200 ] || fail "POST /segment with the stored prompt through the proxy: $code $(cat "$WORK/mask-$i.png")"
    cmp -s "$WORK/mask-1.png" "$WORK/mask-$i.png" || fail "the replicas answer differently"
  done
  for r in "${replicas[@]}"; do
    served=$(podman logs "$r" 2>&1 | grep -o 'request_id=check-[0-9]' | sort -u | tr '\n' ' ' || true)
    [ -n "$served" ] || fail "$r answered none of the /segment requests (least_conn should alternate)"
    podman exec "$r" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/prompts/$prompt_id', timeout=4)" \
      || fail "$r does not find the prompt"
    log "$r found the prompt and answered: $served"
  done

  job=$(curl -s -w '\n%{http_code}' -F "query=@$query" -F "prompt_id=$prompt_id" "$via/jobs")
  [ "$(tail -1 <<<"$job")" = 202 ] || fail "POST /jobs: $job"
  job_id=$(head -1 <<<"$job" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  for _ in 1 2 3 4; do  # more requests than replicas: a round robin would reach the other one
    code=$(curl -s -o "$WORK/job.json" -w '%{http_code}' "$via/jobs/$job_id")
    [ "$code" = 200 ] || fail "GET /jobs/$job_id went to another replica: $code $(cat "$WORK/job.json")"
  done
  job_status() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$WORK/job.json"; }
  t0=$SECONDS
  until [ "$(job_status)" = done ]; do
    case "$(job_status)" in queued|running) ;; *) fail "job: $(cat "$WORK/job.json")" ;; esac
    [ $(( SECONDS - t0 )) -ge 120 ] && fail "job not done in 120 s"
    sleep 1
    curl -s -o "$WORK/job.json" "$via/jobs/$job_id"
  done
  code=$(curl -s -o "$WORK/job.png" -w '%{http_code}' "$via/jobs/$job_id/result")
  [ "$code" = 200 ] && cmp -s "$WORK/job.png" "$WORK/mask-1.png" || fail "job result: $code"
  log "/jobs: status and result from the replica that took job $job_id"

  (cd "$project" && "${compose[@]}" down -v --timeout 15 >"$WORK/down.log" 2>&1) || true
  left=$(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}')
  [ -z "$left" ] || { grep -v 'systemd' "$WORK/down.log" | tail -20; fail "left after down: $left"; }
  podman network rm -f "${PROJECT}_default" >/dev/null 2>&1 || true  # podman-compose 1.0.3 keeps it
  rm -f "$WORK/compose-up"
  log "compose: OK (two replicas behind the proxy; down left no container)"
fi
log "done in $(( $(date +%s) - started ))s"
