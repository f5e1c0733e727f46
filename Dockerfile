# syntax=docker/dockerfile:1
# icseg: the segmentation service and its viewer, with the default model inside.
#
#   docker build -t icseg:cpu .                                                     # CPU torch (default)
#   docker build -t icseg:gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .  # CUDA torch from PyPI
#   docker run --rm -p 8000:8000 icseg:cpu                    # viewer at http://localhost:8000/
#
# Settings are ICSEG_* environment variables (`docker run --rm icseg:cpu serve --help` lists them).
# Size (estimated from the installed size of the same packages, not measured: no Docker engine where this
# was written): CPU about 1.4 GB, CUDA about 6-7 GB; see README "Deploy".

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment in /opt/venv ----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# where torch comes from: the CPU-only wheel index by default; https://pypi.org/simple gives PyPI's
# Linux wheel, which bundles CUDA; https://download.pytorch.org/whl/cu126 and friends pick a CUDA version
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch alone first: the largest layer, rebuilt only when the pin or the index changes (pin = pyproject's)
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model/ model/
COPY data/ data/
COPY app/ app/
COPY cli/ cli/
# not editable: the packages, the viewer (app/static) and the default weights (model/weights) are copied
# into site-packages; torch==2.13.0 is already satisfied, so the rest comes from PyPI
RUN pip install . \
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
