# Memory gateway image: wheels built in a builder stage, a slim runtime with only what runs, non-root, SQLite on
# the /data volume. Configuration comes from environment variables (GATEWAY_<SECTION>_<NAME> for any setting,
# e.g. GATEWAY_AUTH_MODE, plus DASHSCOPE_API_KEY) and an optional config.toml mounted at /app/config.toml.
FROM python:3.13-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# The project's wheel and every dependency's, so the runtime stage installs offline from /wheels.
RUN pip wheel --wheel-dir /wheels .

FROM python:3.13-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_DB=/data/gateway.db \
    GATEWAY_LOG_FORMAT=json
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels memory-gateway \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
    && mkdir -p /data /app \
    && chown gateway:gateway /data
WORKDIR /app
USER gateway
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"
ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0"]
