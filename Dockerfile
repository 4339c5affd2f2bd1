# PixelPerfect image: the Celery GPU worker, and with other commands Flower, migrations and the producer CLI.
#
# Base image: python:3.11-slim, not nvidia/cuda. torch 2.14.1 and torchvision 0.29.1 on PyPI are CUDA 13.0 builds
# that install the CUDA user-space libraries they were built against (cudart, cuBLAS, cuDNN, NCCL, ...) as
# nvidia-* wheels, so a CUDA runtime base would only add a second CUDA copy (~3 GB) that torch never loads, and one
# whose version could drift from torch's. The one thing a container needs from the host is the NVIDIA driver (R580
# or newer for CUDA 13), which the NVIDIA Container Toolkit mounts in for a service that reserves a GPU.
# Python 3.11 is the version the project is developed and tested on.
#
# No model weights in the image: the worker reads PIXELPERFECT_CHECKPOINT from the models volume (/models) or from
# the object store (s3://...).
#
# PIXELPERFECT_EXTRAS: the optional dependencies of pyproject.toml to install with the package, comma-separated.
# Default `gpu`: NVIDIA nvImageCodec (nvJPEG, nvJPEG2000 as CUDA 13 wheels, like torch's), so a worker decodes
# JPEG / JPEG 2000 DICOMs on its GPU (pipeline/decode/gpu.py; the CPU decoders stay the fallback). Build with
# `--build-arg PIXELPERFECT_EXTRAS=` (empty) for an image without it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG PIXELPERFECT_EXTRAS=gpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# Torch first, in a layer of its own (~5 GB): editing the code does not reinstall it. Keep these pins equal to the
# upper bounds in pyproject.toml.
RUN pip install torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pixelperfect ./pixelperfect
RUN pip install ".${PIXELPERFECT_EXTRAS:+[${PIXELPERFECT_EXTRAS}]}" \
    && python -c "import torch, torchvision, pixelperfect; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

FROM ${PYTHON_IMAGE}
ARG APP_UID=10001
# The commit the image is built from, <12 hex digits>[.dirty] (the image has no .git): every process records
# <version>+g<commit> as its code version (pixelperfect/version.py), and a worker refuses the images of a run created
# with other code. docker-compose.yml passes it from the environment; empty means +unknown.
ARG PIXELPERFECT_COMMIT=
ENV PIXELPERFECT_COMMIT=${PIXELPERFECT_COMMIT}
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    REMAP_SIGTERM=SIGQUIT
# REMAP_SIGTERM=SIGQUIT: `docker stop` sends SIGTERM; Celery then does its soft shutdown (waits up to
# PIXELPERFECT_WORKER_SOFT_SHUTDOWN_TIMEOUT for the running batch), then cancels and requeues what is left, all
# before Docker's SIGKILL (stop_grace_period in docker-compose.yml is longer than that timeout).
RUN groupadd --system --gid ${APP_UID} pixelperfect \
    && useradd --system --uid ${APP_UID} --gid pixelperfect --create-home --home-dir /home/pixelperfect \
        --shell /usr/sbin/nologin pixelperfect \
    && mkdir -p /models /data /gpu-claims \
    && chown pixelperfect:pixelperfect /data /gpu-claims
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/pixelperfect-entrypoint
RUN chmod 0755 /usr/local/bin/pixelperfect-entrypoint

USER pixelperfect
WORKDIR /home/pixelperfect
EXPOSE 9808
# The worker runs as celery@$HOSTNAME (see the entrypoint), so the ping reaches exactly this container's node.
HEALTHCHECK --interval=60s --timeout=30s --start-period=120s --retries=3 \
    CMD celery -A pixelperfect.worker.app inspect ping --timeout 10 -d "celery@$HOSTNAME" >/dev/null || exit 1
ENTRYPOINT ["pixelperfect-entrypoint"]
CMD ["worker"]
