# Image for the stream-monitor worker and simulator (see docker-compose.yml).
#   docker build -t stream-monitor .
#   docker run --rm stream-monitor stream-monitor simulate --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app monitor \
    && chown -R monitor /app

# /app is the user's so that commands writing files where they are told (simulate --out, replay --out)
# can write there. The worker itself writes only Faust's temporary data directory (under $TMPDIR, removed
# at exit): deploy/kubernetes runs it with a read-only root filesystem and an emptyDir on /tmp.
USER monitor

# No ENTRYPOINT: the command is the whole process line, e.g. ["stream-monitor", "simulate", ...].
CMD ["stream-monitor", "worker"]
