# The reprogram service: `reprogram serve` (API) by default, `reprogram worker` in compose.
# docker build -t reprogram . && docker run -p 8000:8000 -v reprogram-data:/data reprogram
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    REPROGRAM_DATA_DIR=/data

WORKDIR /app

# torch first, pinned, from the CPU index: an unpinned torch pulls a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The other dependencies in their own layer, rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The service itself (every package pyproject.toml ships). Editable, so that app/ finds
# migrations/ beside it (app/storage/migrate.py).
COPY alembic.ini ./
COPY migrations ./migrations
COPY engine ./engine
COPY adapters ./adapters
COPY app ./app
RUN pip install --no-deps -e . \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home reprogram \
    && mkdir -p /data \
    && chown reprogram:reprogram /data

# All state (SQLite in embedded mode, uploads, programs) lives under /data.
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["reprogram", "serve", "--host", "0.0.0.0", "--port", "8000"]
