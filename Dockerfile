# fieldlab's own image: the gateway, edge agents and simulated machines (docker-compose.yml).
# Multi-architecture base (amd64, arm64 for a Raspberry Pi 4/5); pinned, so a rebuild gives the same stack.
FROM python:3.12.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract contract
COPY edge edge
COPY gateway gateway
COPY simulators simulators
COPY fieldlab fieldlab
COPY dashboards dashboards
RUN pip install ".[edge,gateway,sim]" && rm -rf /src

# never root: uid 10001 reads the agents' credentials (fieldlab deploy --layout compose hands them over)
RUN useradd --system --uid 10001 --home-dir /var/lib/fieldlab --create-home fieldlab
USER 10001:10001
WORKDIR /var/lib/fieldlab
ENTRYPOINT ["fieldlab"]
CMD ["--help"]
