# chatbot-bridge container image.
#   docker build -t chatbot-bridge .
#   docker run --rm -p 8000:8000 -v "$PWD/config:/srv/config:ro" --env-file .env chatbot-bridge
# The image carries no products file: mount one at /srv/config/products.toml (or point
# BRIDGE_PRODUCTS_FILE at /srv/config/products.example.toml for the console demo).

# --- builder: resolve and install the package and its dependencies into /opt/venv -----------
# The same Python minor version as CI (Debian bookworm's 3.11), so what is tested is what runs.
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /build
# Dependencies first, from the hashed lock file: this layer is rebuilt only when the lock
# changes, not on every change to the code. No test tools and no embedded store.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/runtime.txt
# Then the package itself (the Lua scripts ship as package data of app.store), without
# resolving anything again: the final image needs no source tree.
COPY pyproject.toml README.md LICENSE ./
COPY app ./app
RUN pip install --no-cache-dir --no-deps .

# --- runtime: the same base, the venv, a non-root user; no compilers or build tools ----------
FROM python:3.11-slim-bookworm AS runtime

# Kept equal to the version in pyproject.toml by a test; `chatbot-bridge --version` and
# /healthz read the installed package's metadata.
ARG VERSION=0.2.0.dev0
LABEL org.opencontainers.image.title="chatbot-bridge" \
      org.opencontainers.image.description="Posts what a user just did in the product into their support conversation." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# Fixed ids so volume permissions and Kubernetes runAsUser/runAsNonRoot are predictable.
RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin bridge

COPY --from=builder /opt/venv /opt/venv

WORKDIR /srv
# Root-owned and read-only for the service user; real products files are mounted over /srv/config.
COPY config/products.example.toml /srv/config/products.example.toml

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_PRODUCTS_FILE=/srv/config/products.toml \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8000

USER 10001:10001
EXPOSE 8000

# Liveness only (no dependency checks): slim images have no curl, so ask Python.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('BRIDGE_PORT', '8000'), timeout=2)"]

# uvicorn drains due notes on SIGTERM within BRIDGE_SHUTDOWN_GRACE_S; exec form keeps python
# as PID 1 so the signal reaches it directly.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app", "serve"]
