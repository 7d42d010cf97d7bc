# syntax=docker/dockerfile:1
# One image for every shop process; the first argument chooses it (ops/entry.py):
#   docker run IMAGE order | gateway | shopctl status | health ADDR
# Runs as uid 10001 with a read-only root file system: everything it writes goes to
# SHOP_DATA_DIR (/var/lib/shop, a volume) and /tmp. Nothing is fetched at run time.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/shop
# Dependencies first: this layer is rebuilt only when the pins change.
COPY deploy/image/requirements.txt ./requirements.txt
RUN python -m venv /opt/shop/venv \
 && /opt/shop/venv/bin/pip install --no-cache-dir --only-binary=:all: -r requirements.txt
COPY gen/shop ./app/gen/shop
COPY proto ./app/proto
COPY services ./app/services
COPY gateway ./app/gateway
COPY ops ./app/ops
# Compiled now: the running container cannot write __pycache__ next to the sources.
RUN /opt/shop/venv/bin/python -m compileall -q -j 0 app venv

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 shop \
 && useradd --system --uid 10001 --gid shop --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin shop \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/shop
COPY --from=build /opt/shop /opt/shop
ENV PATH=/opt/shop/venv/bin:$PATH \
    PYTHONPATH=/opt/shop/app:/opt/shop/app/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHOP_DATA_DIR=/var/lib/shop \
    SHOP_HOST=0.0.0.0
WORKDIR /opt/shop/app
USER 10001:10001
# gateway, the eight services, the plaintext health-only probe port
EXPOSE 8080 50051-50058 8086
ENTRYPOINT ["/opt/shop/venv/bin/python", "-m", "ops.entry"]
CMD ["--help"]
