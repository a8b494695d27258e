# Memory gateway image: slim Python, non-root, SQLite on the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_DB=/data/gateway.db

WORKDIR /app
COPY pyproject.toml README.md config.toml ./
COPY gateway ./gateway
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /data \
    && chown gateway:gateway /data

USER gateway
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"

ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0"]
