# One image for every pipeline script (producer, consumer, demo corpus, mapreduce, visualize);
# docker-compose.yml chooses the command per service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    MPLBACKEND=Agg

WORKDIR /app

# Dependencies before code: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# The code stays owned by root (read-only for the pipeline); only the state folder the producer's
# --watch writes to belongs to the user the containers run as.
# /keys/*: the volumes of docker-compose.yml's meili-setup (each MeiliSearch key in its own), owned
# by app so that a fresh volume is too.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin app \
    && mkdir -p /app/.local /keys/consumer /keys/reader \
    && chown app:app /app/.local /keys/consumer /keys/reader \
    && chmod 0700 /keys/consumer /keys/reader
COPY . .

USER app

CMD ["python", "consumer/image_consumer.py"]
