# Learn2Reg LapIRN pipeline image. Use it through docker-compose.yml:
#   docker compose run --rm train | predict | evaluate | ...
#
# Stages (docker build --target NAME; compose builds `pipeline`):
#   install-files  what the dependency install reads (requirements, lock, .docker-wheels/): mounted, never copied
#   runtime        the base image + a venv with torch and every pinned dependency + the non-root user
#   pipeline       runtime + the code, configs and published weights; the stages' entrypoint
#   submission     pipeline + one run + one organiser's contract: the image handed in to a challenge
#                  (built by `python -m pipeline container` from a staged context, never from the repository)
#
# Python and torch: by default the official PyTorch CUDA runtime image, whose torch is kept. For a base
# without torch (a CPU image), TORCH_WHEEL or TORCH_INDEX installs the pinned torch. Every other package,
# torch's own dependencies included, comes at the version pinned in requirements-lock.txt
# (docker/install-deps.sh).
#
# Build arguments:
#   BASE_IMAGE   image with python3 >= 3.11 and pip (and usually torch). docker-compose.cpu.yml makes it
#                python:3.11-slim-bookworm; docker/local-base.sh builds one where nothing can be pulled.
#   TORCH_WHEEL  a torch wheel inside the build context, under .docker-wheels/ (docker/torch-wheel.sh puts
#                the CPU wheel there). Only mounted for the install: it adds no layer.
#   TORCH_INDEX  a wheel index to take the pinned torch from (docker-compose.cpu.yml: PyTorch's CPU index),
#                when TORCH_WHEEL is empty.
#   APP_UID      uid/gid of the image's non-root user (compose runs the stages as the host user instead).
#   SUBMISSION_WORKDIR, CONTRACT   the submission target's working directory and contract name (set by
#                `python -m pipeline container` from pipeline/container/contracts.py).
# Needs BuildKit (the default builder of Docker >= 23 and of docker compose v2).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
ARG APP_UID=10001

# Only the files the install needs (code changes keep the install layer cached). .docker-wheels/ is always
# there (its .gitignore is tracked), empty unless a wheel was put there.
FROM scratch AS install-files
COPY requirements.txt requirements-docker.txt requirements-lock.txt docker/install-deps.sh /
COPY .docker-wheels/ /.docker-wheels/

FROM ${BASE_IMAGE} AS runtime
ARG APP_UID

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

# TORCH_WHEEL and TORCH_INDEX reach the script as environment variables (declared here, so that they
# only key this layer's cache).
ARG TORCH_WHEEL=""
ARG TORCH_INDEX=""
RUN --mount=type=bind,from=install-files,target=/mnt \
    sh /mnt/install-deps.sh /mnt \
    && rm -rf /tmp/matplotlib

RUN groupadd --gid "${APP_UID}" l2r \
    && useradd --uid "${APP_UID}" --gid l2r --no-create-home --home-dir /tmp --shell /usr/sbin/nologin l2r

FROM runtime AS pipeline
ARG APP_UID
WORKDIR /app
COPY pyproject.toml requirements.txt requirements-docker.txt requirements-lock.txt ./
COPY configs/ configs/
COPY learn2reg/ learn2reg/
COPY evaluation/ evaluation/
COPY pipeline/ pipeline/
# the authors' published LapIRN weights and their MIT notice (import-weights /app/weights/...)
COPY weights/ weights/
COPY docker/entrypoint.sh docker/entrypoint.sh
# byte-code compiled once here: PYTHONDONTWRITEBYTECODE (above) and a read-only /app would otherwise make
# every command compile every module it imports at each start
RUN python -m compileall -q learn2reg evaluation pipeline

# compose runs the stages as the host user, who has no entry in /etc/passwd: give any user a
# writable home and a login name (getpass.getuser(), used by torch.compile's cache, needs one).
ENV HOME=/tmp \
    LOGNAME=l2r
USER ${APP_UID}:${APP_UID}
ENTRYPOINT ["/bin/sh", "/app/docker/entrypoint.sh"]
CMD ["--help"]

# A submission image (`python -m pipeline container`; README, "Hand in a submission"). Its build context is
# staged by pipeline/container/build.py: the files above plus submission/ = contract.json (the organiser's
# contract), run/ (the resolved config.json, checkpoints/best.pt, imported.json; never data or caches) and
# bin/ (the contract's wrapper scripts, e.g. OncoReg's train.sh and test.sh, put in its working directory).
FROM pipeline AS submission
ARG APP_UID
ARG SUBMISSION_WORKDIR=/app
ARG CONTRACT=unknown
LABEL org.opencontainers.image.title="l2r-lapirn submission: ${CONTRACT}"
COPY submission/ /app/submission/
WORKDIR ${SUBMISSION_WORKDIR}
COPY submission/bin/ ./
ENV L2R_SUBMISSION=/app/submission \
    L2R_APP_UID=${APP_UID}
# Starts as root only to hand over at once: without --user (LUMIR 2024, ReMIND2Reg, L2R and OncoReg run it
# so) the entry point becomes the owner of the folder it writes, else the image's user l2r, before any work
# (pipeline/container/entry.py); with --user (LUMIR 2025) it is that user throughout.
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["python", "-m", "pipeline.container.entry"]
CMD []
