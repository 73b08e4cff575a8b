# One image for every pipeline process (connector, worker, sink) and the sandboxes;
# docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SFPROV_STATE_DIR=/state
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY common common
COPY connectors connectors
COPY streams streams
COPY sinks sinks
COPY sandbox sandbox
COPY ops ops
COPY schemas schemas
RUN pip install -c requirements.lock . && useradd --uid 10001 sfprov && mkdir -p /state && chown sfprov /state
USER sfprov
VOLUME ["/state"]
