# One image for every pipeline process (connector, worker, sink) and the sandboxes;
# docker-compose.yml picks the command.
#
# Build stage: the project's wheel (which carries the Avro schemas and the .proto files) and
# a wheel of every pinned dependency.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY common common
COPY connectors connectors
COPY streams streams
COPY sinks sinks
COPY sandbox sandbox
COPY ops ops
COPY schemas schemas
RUN pip wheel --wheel-dir /wheels -c requirements.lock .

# Runtime: only what runs — the installed wheels, no source tree, no build tools
# (grpcio-tools, setuptools' build, compilers stay in the build stage).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 SFPROV_STATE_DIR=/state
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels sfprov && rm -rf /wheels \
    && useradd --uid 10001 sfprov && mkdir -p /state && chown sfprov /state
WORKDIR /state
USER sfprov
VOLUME ["/state"]
