# syntax=docker/dockerfile:1
# grove-autoscaler image: the builder makes wheels of the project and its dependencies; the
# final image installs them from that directory only, with no compiler and no network.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY autoscaler ./autoscaler
COPY policies ./policies
COPY metrics ./metrics
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels grove-autoscaler \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin grove-autoscaler
# A numeric user lets the kubelet verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 6443
ENTRYPOINT ["grove-autoscaler"]
CMD ["--help"]
