# One image, two roles: the default command runs everything on one machine (Redis, a worker,
# the API). For scale-out, run the API with `python -m backend.app` semantics via uvicorn and
# workers with `python -m worker.main` against a shared REDIS_URL.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependency layer first, so code changes do not reinstall torch.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY gfsam gfsam
COPY backend backend
COPY worker worker

ENV MODEL_DIR=/models \
    DATA_DIR=/data \
    PORT=9090 \
    PYTHONUNBUFFERED=1
VOLUME ["/models", "/data"]
EXPOSE 9090

CMD ["python", "-m", "backend.run"]
