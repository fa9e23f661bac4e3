# One image. The default command runs everything on one machine (a private Redis, a worker, the
# API on :9090). To scale out, run the same image with a shared REDIS_URL as
#   API:    uvicorn backend.app:create_app --factory --host 0.0.0.0 --port 9090
#   worker: python -m worker.main            (GFSAM_DEVICE=cuda on GPU machines)
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependency layer first, so code changes do not reinstall torch.
COPY requirements.txt .
# sam2 (an sdist) builds against the torch installed first, without its CUDA extension (used
# only by video tracking's hole filling, never by GF-SAM).
ENV SAM2_BUILD_CUDA=0
RUN pip install --no-cache-dir setuptools wheel $(grep -E '^(torch|torchvision)==' requirements.txt) \
 && pip install --no-cache-dir --no-build-isolation -r requirements.txt

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
