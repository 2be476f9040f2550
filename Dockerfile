# syntax=docker/dockerfile:1
#
# mssante-connector image: HL7 v2 (MLLP) -> MSSante bridge.
#
#   docker build -t mssante-connector .
#   docker run --read-only --tmpfs /tmp \
#     -v mssconnector-data:/var/lib/mssante-connector \
#     -v "$PWD/connector.toml:/etc/mssante-connector/connector.toml:ro" \
#     -v "$PWD/certs:/etc/mssante-connector/certs:ro" \
#     -p 2575:2575 -p 127.0.0.1:9610:9610 mssante-connector
#
# Runs as uid/gid 10001 with a read-only root filesystem: everything the connector writes (SQLite
# store, payload log, Maildir, installed whitelist) goes under the data volume
# /var/lib/mssante-connector; set data_dir, [store] path and [directory] whitelist there.
# TMPDIR=/tmp: nothing writes there in normal operation (client TLS keys are handed to OpenSSL
# through memfd), but mount an empty, writable /tmp (--tmpfs /tmp, an emptyDir in Kubernetes) so a
# library falling back to a temporary file fails soft rather than on a read-only filesystem.
# See docs/deploying.md.

# -- builder: wheels of the project and of its dependencies, installed into a venv ---------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/mssante-connector

WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector

# Every dependency has a manylinux wheel for CPython 3.11 (lxml, cryptography, psycopg[binary],
# saxonche, cffi, pillow, brotli) or is pure Python (weasyprint), so no compiler is needed; `pip wheel` builds the project's own wheel.
RUN /opt/mssante-connector/bin/pip wheel --wheel-dir /wheels . \
 && /opt/mssante-connector/bin/pip install --no-index --find-links /wheels mssante-connector \
 && /opt/mssante-connector/bin/python -m compileall -q /opt/mssante-connector/lib \
 && /opt/mssante-connector/bin/mssante-connector --help >/dev/null

# -- runtime: the slim base image, the PDF renderer's libraries, the venv --------------------------
FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="mssante-connector" \
      org.opencontainers.image.description="HL7 v2 (MLLP) to MSSante secure e-mail bridge" \
      org.opencontainers.image.licenses="Apache-2.0"

# WeasyPrint renders the PDF/A-1 of a CDA that embeds none (ECO.2.1.5, connector/cda/render.py):
# it loads Pango and HarfBuzz's subsetter, and embeds DejaVu. Nothing else from Debian.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid/gid: the Helm chart's securityContext (runAsUser/fsGroup 10001) matches it.
RUN groupadd --system --gid 10001 mssante \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /var/lib/mssante-connector --shell /usr/sbin/nologin mssante \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/mssante-connector \
 && install -d -o root -g root -m 0755 /etc/mssante-connector /etc/mssante-connector/certs

COPY --from=builder /opt/mssante-connector /opt/mssante-connector

ENV PATH=/opt/mssante-connector/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/mssante-connector \
    TMPDIR=/tmp \
    MSSCONNECTOR_CONFIG=/etc/mssante-connector/connector.toml

WORKDIR /var/lib/mssante-connector
VOLUME ["/var/lib/mssante-connector"]

USER 10001:10001

# 2575: MLLP (one port per configured listener; 2575 is the default). 9610: admin HTTP
# (/metrics, /healthz, /readyz); set [admin] host = "0.0.0.0" in the container.
EXPOSE 2575 9610

# The admin listener's /healthz, asked as $MSSCONNECTOR_CONFIG's [admin] says: its port, plain
# HTTP or HTTPS with its own certificate pinned ([admin.tls]). Standard library only (no curl in
# slim images); http.client does not read HTTP(S)_PROXY, so a site proxy cannot capture it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["mssante-connector", "healthcheck", "--timeout", "4"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["mssante-connector"]
CMD ["serve", "--config", "/etc/mssante-connector/connector.toml"]
