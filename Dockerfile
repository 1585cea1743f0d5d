# ems-platform runtime images: the edge agent (also the in-cluster protocol gateway, deployment/ems-gateway),
# the ingest workers (also the twin read API) and the IEEE 2030.5 north-bound client. One build context,
# three targets; scripts/build-images.sh builds them (locally with buildah, in .github/workflows/images.yml
# on tags), e.g.
#
#   scripts/build-images.sh                       # all three, tagged ghcr.io/ems-platform/<name>:<version>
#   buildah build --target edge-agent --build-arg BASE=… -t ghcr.io/ems-platform/edge-agent:0.1.0 .
#
# Two stages per image. The builder installs Debian's python3 and python3-venv and creates the virtualenv
# /opt/ems/venv from a wheelhouse (build/wheels: the exact pins of requirements.txt and the project's own
# wheel, prepared by scripts/build-images.sh; the build itself reaches no Python package index). The
# runtime stage installs only Debian's python3 and copies the virtualenv: no pip, no ensurepip, no
# setuptools, no compiler. Both stages start FROM the same Debian base, pinned by digest, so the
# virtualenv's interpreter is the runtime's /usr/bin/python3. Where the base image cannot be pulled,
# scripts/build-images.sh builds an equivalent one from Debian packages (mmdebstrap) and passes it as BASE.
#
# The images match what components/ deploys: non-root uid/gid 10001 (the pods also set it), nothing
# written outside mounted volumes (read-only root filesystem), entrypoint = the console script, so the
# pod's `args` are its subcommand (`run --config …`). Each carries an SPDX SBOM of its Debian packages
# and Python distributions at /usr/share/doc/ems-platform/sbom.spdx.json (scripts/image_sbom.py).

ARG BASE=docker.io/library/debian:bookworm-slim@sha256:4b50eb66f977b4062683ff434ef18ac191da862dbe966961bc11990cf5791a8d
# The distributions of each image's virtualenv, as requirements.txt names them (it holds their exact pins).
# The edge agent's Modbus, MQTT and metrics stack; the ingest has the same and numpy (below); the north-bound
# client its HTTP, 2030.5 XML, certificate and MQTT stack, every dependency listed (installed --no-deps).
ARG EDGE_PACKAGES=pymodbus|paho-mqtt|prometheus-client|cramjam|orjson|uvloop|tomlkit|protobuf|pyjwt|cryptography|cffi|pycparser
ARG NORTHBOUND_PACKAGES=httpx|httpcore|h11|anyio|idna|certifi|envoy-schema|pydantic|pydantic-core|pydantic-xml|lxml|annotated-types|typing-inspection|typing-extensions|cryptography|cffi|pycparser|paho-mqtt|prometheus-client|orjson

# ---- builders ---------------------------------------------------------------------------------------
# Each -build stage runs scripts/image-venv.sh with its package list: the exact pins, then the project's
# own wheel; pip, setuptools and the distributions' test suites are dropped.
FROM ${BASE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INDEX=1 \
    PIP_FIND_LINKS=/opt/ems/wheels
# The base's digest fixes the Debian release; apt takes that release's current security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/ems/venv
WORKDIR /opt/ems
COPY build/wheels ./wheels
COPY requirements.txt scripts/image-venv.sh ./

FROM builder AS edge-build
ARG EDGE_PACKAGES
RUN sh image-venv.sh "${EDGE_PACKAGES}"

# The ingest: the edge's dependencies and numpy (its column paths). numpy with its OpenBLAS is 73 MB
# that the edge agent never imports, so it is not in the edge-agent image (numpy's own tests alone
# are 15 MB: image-venv.sh drops every distribution's test suite).
FROM builder AS ingest-build
ARG EDGE_PACKAGES
RUN sh image-venv.sh "${EDGE_PACKAGES}|numpy"

# The north-bound client: its own dependencies, not the edge's Modbus stack; still no Pulumi.
FROM builder AS northbound-build
ARG NORTHBOUND_PACKAGES
RUN sh image-venv.sh "${NORTHBOUND_PACKAGES}" --no-deps

# ---- runtime ----------------------------------------------------------------------------------------
FROM ${BASE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/ems-platform/ems-platform
LABEL org.opencontainers.image.vendor="ems-platform" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/ems/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# apt-get clean also drops apt's package caches (/var/cache/apt/*.bin, 80 MB for bookworm's lists): the
# official base's apt config never writes them, a base made with mmdebstrap does.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 ems \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ems
WORKDIR /opt/ems

FROM runtime AS edge-agent
LABEL org.opencontainers.image.title="ems edge agent" \
      org.opencontainers.image.description="Modbus polling, spool and MQTT/mTLS publishing (ems-edge); also the in-cluster gateway"
COPY --from=edge-build /opt/ems/venv /opt/ems/venv
RUN --mount=type=bind,source=scripts/image_sbom.py,target=/tmp/image_sbom.py \
    mkdir -p /usr/share/doc/ems-platform \
 && python3 /tmp/image_sbom.py --name edge-agent --venv /opt/ems/venv > /usr/share/doc/ems-platform/sbom.spdx.json
USER 10001:10001
# Metrics and health (ems-gateway serves them on 9100; an edge node defaults to 9108).
EXPOSE 9100
ENTRYPOINT ["ems-edge"]
CMD ["run", "--config", "/etc/ems/sensors.conf"]

FROM runtime AS ingest
LABEL org.opencontainers.image.title="ems ingest" \
      org.opencontainers.image.description="MQTT to Prometheus remote write and the twin read API (ems-ingest)"
COPY --from=ingest-build /opt/ems/venv /opt/ems/venv
RUN --mount=type=bind,source=scripts/image_sbom.py,target=/tmp/image_sbom.py \
    mkdir -p /usr/share/doc/ems-platform \
 && python3 /tmp/image_sbom.py --name ingest --venv /opt/ems/venv > /usr/share/doc/ems-platform/sbom.spdx.json
USER 10001:10001
EXPOSE 9100
ENTRYPOINT ["ems-ingest"]
CMD ["run", "--config", "/etc/ems/ingest.toml"]

FROM runtime AS northbound
LABEL org.opencontainers.image.title="ems north-bound" \
      org.opencontainers.image.description="IEEE 2030.5 client of the utility's server (ems-northbound)"
COPY --from=northbound-build /opt/ems/venv /opt/ems/venv
RUN --mount=type=bind,source=scripts/image_sbom.py,target=/tmp/image_sbom.py \
    mkdir -p /usr/share/doc/ems-platform \
 && python3 /tmp/image_sbom.py --name northbound --venv /opt/ems/venv > /usr/share/doc/ems-platform/sbom.spdx.json
USER 10001:10001
# Metrics and /healthz (components/northbound.py serves them on 9100).
EXPOSE 9100
ENTRYPOINT ["ems-northbound"]
CMD ["run", "--config", "/etc/ems/northbound/config/northbound.toml"]
