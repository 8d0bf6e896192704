# One image for every Tuneboard role in docker-compose.yml: the dashboard (app), the one-shot migration,
# a Ray head and Ray GPU worker nodes. Build: docker build -t tuneboard .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TUNEBOARD_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

# curl-free health checks use Python; tini reaps the training processes the app starts
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tuneboard
# dependencies first (cached while only the sources change); the PyPI torch wheel for Linux carries CUDA
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
COPY worker ./worker
COPY tuneboard ./tuneboard
COPY migrations ./migrations
COPY alembic.ini ./
COPY templates ./templates
COPY static ./static
# editable: the app finds templates/ and static/ beside its package directory
RUN pip install -c constraints.txt -e '.[train,ray,postgres]'

RUN useradd --create-home --uid 1000 tuneboard \
 && mkdir -p /data \
 && chown tuneboard /data
USER tuneboard
VOLUME ["/data"]
EXPOSE 8000

ENTRYPOINT ["tini", "--"]
CMD ["tuneboard", "serve", "--host", "0.0.0.0", "--port", "8000"]
