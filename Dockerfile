# Learn2Reg LapIRN pipeline image. Use it through docker-compose.yml:
#   docker compose run --rm train | predict | evaluate | ...
#
# Python and torch come from the base image (the official PyTorch CUDA runtime image by default);
# this image adds the other pinned requirements (requirements-docker.txt = requirements.txt
# without torch) and never downloads another torch.
#
# Build arguments:
#   BASE_IMAGE   image with python3 >= 3.11 and pip (and usually torch). The container tests pass a locally
#                built Debian image, since nothing can be pulled on the CI machines.
#   TORCH_WHEEL  optional path, inside the build context, of a torch wheel to install (for a base
#                image without torch). It is only mounted for the install: it adds no layer.
#   APP_UID      uid/gid of the image's non-root user (compose runs as the host user instead).
# Needs BuildKit (the default builder of Docker >= 23 and of docker compose v2).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
ARG TORCH_WHEEL=""

# Only the files the install needs (so code changes keep the install layer cached); mounted below,
# never copied into the image.
FROM scratch AS install-files
ARG TORCH_WHEEL
COPY requirements-docker.txt ${TORCH_WHEEL} /

FROM ${BASE_IMAGE}
ARG TORCH_WHEEL
ARG APP_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONPATH=/app \
    MPLCONFIGDIR=/tmp/matplotlib

# A virtual environment on top of the base's Python: it sees the base's torch and pip
# (--system-site-packages), and installs go into it, never over the base's packages (PEP 668 safe
# on Ubuntu/Debian-based images). --without-pip: the base's pip is used (no ensurepip needed).
RUN python3 -m venv --system-site-packages --without-pip "${VIRTUAL_ENV}"

RUN --mount=type=bind,from=install-files,target=/mnt \
    if [ -n "${TORCH_WHEEL}" ]; then python -m pip install --no-cache-dir "/mnt/$(basename "${TORCH_WHEEL}")"; fi \
    && python -m pip install --no-cache-dir --only-binary=:all: -r /mnt/requirements-docker.txt \
    && python -c "import matplotlib, nibabel, numpy, pandas, scipy, SimpleITK, torch, tqdm; print('torch', torch.__version__)" \
    && rm -rf /tmp/matplotlib

RUN groupadd --gid "${APP_UID}" l2r \
    && useradd --uid "${APP_UID}" --gid l2r --no-create-home --home-dir /tmp --shell /usr/sbin/nologin l2r

WORKDIR /app
COPY pyproject.toml requirements.txt requirements-docker.txt ./
COPY configs/ configs/
COPY learn2reg/ learn2reg/
COPY evaluation/ evaluation/
COPY pipeline/ pipeline/
# the authors' published LapIRN weights and their MIT notice (import-weights /app/weights/...)
COPY weights/ weights/
COPY docker/entrypoint.sh docker/entrypoint.sh

# compose runs the stages as the host user, who has no entry in /etc/passwd: give any user a
# writable home and a login name (getpass.getuser(), used by torch.compile's cache, needs one).
ENV HOME=/tmp \
    LOGNAME=l2r
USER ${APP_UID}:${APP_UID}
ENTRYPOINT ["/bin/sh", "/app/docker/entrypoint.sh"]
CMD ["--help"]
