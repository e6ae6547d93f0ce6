# One image per service of the customer data platform:
#   docker build --build-arg SERVICE=ingest -t cdp/ingest .
FROM python:3.11-slim

ARG SERVICE
ARG UV_VERSION=0.13.8

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH

RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin cdp

WORKDIR /app

# Dependencies first (cached while only the source changes).
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/
COPY services/ingest/pyproject.toml services/ingest/
COPY services/profile/pyproject.toml services/profile/
COPY services/segment/pyproject.toml services/segment/
COPY services/campaign/pyproject.toml services/campaign/
COPY services/consent/pyproject.toml services/consent/
COPY tools/cli/pyproject.toml tools/cli/
COPY tools/dashboards/pyproject.toml tools/dashboards/
COPY tools/shop/pyproject.toml tools/shop/
RUN uv sync --frozen --all-packages --no-dev --no-install-workspace

# Then the platform itself.
COPY libs libs
COPY services services
COPY tools tools
RUN uv sync --frozen --all-packages --no-dev \
 && test -n "${SERVICE}" \
 && python -c "import cdp_${SERVICE}"

ENV CDP_SERVICE=${SERVICE}
USER cdp
CMD ["sh", "-c", "exec python -m cdp_${CDP_SERVICE}"]
