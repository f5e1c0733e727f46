# syntax=docker/dockerfile:1
# icseg: the segmentation service and its viewer, with the default model inside.
#
#   docker build -t icseg:cpu .                                                     # CPU torch (default)
#   docker build -t icseg:gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .  # CUDA torch from PyPI
#   docker run --rm -p 8000:8000 icseg:cpu                    # viewer at http://localhost:8000/
#
# Without a registry or the PyTorch index (scripts/container-check.sh builds it so, with podman):
#   podman build --format docker --build-arg PYTHON_IMAGE=localhost/icseg-python:3.11-bookworm \
#       --build-arg PACKAGES_FROM=wheels -t icseg:cpu .   # base made here; packages from deploy/wheels/
#
# Settings are ICSEG_* environment variables (`docker run --rm icseg:cpu serve --help` lists them).
# Size, measured (podman, CPU build, see README "Deploy"): 1.40 GB; CUDA (never built here) about 6-7 GB.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment in /opt/venv ----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# where torch comes from: the CPU-only wheel index by default; https://pypi.org/simple gives PyPI's
# Linux wheel, which bundles CUDA; https://download.pytorch.org/whl/cu126 and friends pick a CUDA version
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# PACKAGES_FROM=wheels: torch and every other Python package from deploy/wheels/ in the build context,
# no index reached (scripts/container-check.sh fills it with `pip download`); index: torch from
# TORCH_INDEX_URL, the rest from PyPI. The folder is mounted for the pip steps only, so it is in no layer.
ARG PACKAGES_FROM=index
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch alone first: the largest layer, rebuilt only when the pin or the index changes (pin = pyproject's)
RUN --mount=type=bind,source=deploy/wheels,target=/wheels \
    if [ "${PACKAGES_FROM}" = wheels ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; \
    else export PIP_INDEX_URL="${TORCH_INDEX_URL}"; fi \
    && pip install torch==2.13.0
WORKDIR /src
# then pyproject's other dependencies, so that a change to the code does not download them again
COPY pyproject.toml ./
RUN --mount=type=bind,source=deploy/wheels,target=/wheels \
    if [ "${PACKAGES_FROM}" = wheels ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
    && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY README.md ./
COPY model/ model/
COPY data/ data/
COPY app/ app/
COPY cli/ cli/
# not editable: the packages, the viewer (app/static) and the default weights (model/weights) are copied
# into site-packages; every dependency is already satisfied (wheels: setuptools to build it comes from there)
RUN --mount=type=bind,source=deploy/wheels,target=/wheels \
    if [ "${PACKAGES_FROM}" = wheels ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
    && pip install . \
    && python -c "import cli.main, app.main, model, data"

# -- runtime: the venv on a clean slim image, as a non-root user ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG ICSEG_UID=10001
RUN groupadd --system --gid "${ICSEG_UID}" icseg \
    && useradd --system --uid "${ICSEG_UID}" --gid icseg --home-dir /var/lib/icseg --create-home \
       --shell /usr/sbin/nologin icseg
COPY --from=build /opt/venv /opt/venv
# ICSEG_DATA_DIR: job results and (without Redis) the prompt store; mount a volume there to keep prompts
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ICSEG_DATA_DIR=/var/lib/icseg
WORKDIR /var/lib/icseg
# numeric, so that the host (and Kubernetes' runAsNonRoot) can tell it is not root
USER ${ICSEG_UID}:${ICSEG_UID}
EXPOSE 8000
# ready = the model is loaded and the prompt store answers; python's urllib, so no curl in the image
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
ENTRYPOINT ["icseg"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
