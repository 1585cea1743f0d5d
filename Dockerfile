# ems-platform runtime images: the edge agent (also the in-cluster protocol gateway, deployment/ems-gateway) and the
# ingest workers. One build context, two targets:
#
#   docker build --target edge-agent -t ghcr.io/ems-platform/edge-agent:0.1.0 .
#   docker build --target ingest     -t ghcr.io/ems-platform/ingest:0.1.0 .
#   docker build --target northbound -t ghcr.io/ems-platform/northbound:0.1.0 .
#
# The images match what components/ deploys: non-root uid/gid 10001 (the pods also set it),
# nothing written outside mounted volumes (read-only root filesystem), entrypoint = the
# console script, so the pod's `args` are its subcommand (`run --config …`).
# Only the runtime dependencies are installed, at the pins of requirements.txt; Pulumi and
# the test tooling stay out of the images.

FROM docker.io/library/python:3.11.10-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/ems
COPY requirements.txt pyproject.toml ./
RUN grep -E '^(pymodbus|paho-mqtt|prometheus-client|cramjam|orjson|tomlkit|protobuf)==' requirements.txt > runtime-requirements.txt \
 && pip install -r runtime-requirements.txt
COPY ems_contract ./ems_contract
COPY ems_runtime ./ems_runtime
COPY edge_agent ./edge_agent
COPY ingest ./ingest
RUN pip install --no-deps . \
 && groupadd --gid 10001 ems \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ems
USER 10001:10001

FROM base AS edge-agent
# Metrics and health (ems-gateway serves them on 9100; an edge node defaults to 9108).
EXPOSE 9100
ENTRYPOINT ["ems-edge"]
CMD ["run", "--config", "/etc/ems/sensors.conf"]

FROM base AS ingest
EXPOSE 9100
ENTRYPOINT ["ems-ingest"]
CMD ["run", "--config", "/etc/ems/ingest.toml"]

# The IEEE 2030.5 north-bound client: its own dependencies (HTTP, the 2030.5 XML models,
# certificates, MQTT for commands), not the edge's Modbus stack; still no Pulumi.
FROM docker.io/library/python:3.11.10-slim-bookworm AS northbound
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/ems
COPY requirements.txt pyproject.toml ./
RUN grep -E '^(httpx|httpcore|h11|anyio|idna|certifi|envoy-schema|pydantic|pydantic-core|pydantic-xml|lxml|annotated-types|typing-inspection|typing-extensions|cryptography|cffi|pycparser|paho-mqtt|prometheus-client|orjson)==' requirements.txt > runtime-requirements.txt \
 && pip install --no-deps -r runtime-requirements.txt
COPY ems_contract ./ems_contract
COPY ems_runtime ./ems_runtime
COPY northbound ./northbound
RUN pip install --no-deps . \
 && groupadd --gid 10001 ems \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ems
USER 10001:10001
# Metrics and /healthz (components/northbound.py serves them on 9100).
EXPOSE 9100
ENTRYPOINT ["ems-northbound"]
CMD ["run", "--config", "/etc/ems/northbound/config/northbound.toml"]
