# syntax=docker/dockerfile:1
# One image for every revsync service; the service is the argument:
#   docker run IMAGE run order-sync        (or invoice-sync, fulfillment-sync, erp-outbox-publisher,
#                                           crm-cdc-bridge)
#   docker run IMAGE db migrate            (governance: revsync's tables, as their owner)
#   docker run IMAGE schemas register      (governance: register the contracts)
#   docker run IMAGE topics apply          (governance: create/update the catalog's topics)
#   docker run IMAGE acls apply            (governance: each service's Kafka ACLs)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the revsync distribution and its dependencies, into a self-contained venv --------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# The dependencies first, exactly as requirements.lock pins them (make lock): pip refuses any
# file whose hash the lock does not name, and this layer outlives a code change. Wheels only:
# a source archive would be built with build requirements no hash covers.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps --only-binary :all: \
        -r requirements.lock
COPY pyproject.toml README.md ./
COPY services/ services/
# Then revsync alone, built with the lock's setuptools and wheel (no build isolation, so nothing
# unpinned is fetched); not editable: the image carries the installed packages, never the source.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

# --- runtime: the venv, the contracts, a non-root user; nothing to compile with -------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="revsync" \
      org.opencontainers.image.description="CRM (Salesforce) and ERP order-to-cash sync on Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 revsync \
    && useradd --system --uid 10001 --gid revsync --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin revsync
COPY --from=build /opt/venv /opt/venv
COPY schemas/avro /app/schemas/avro
# The bytecode was compiled at install time; a read-only root filesystem needs no more.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    REVSYNC_SCHEMAS_DIR=/app/schemas/avro
WORKDIR /app
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["revsync"]
CMD ["--help"]
