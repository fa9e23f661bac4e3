"""The HTTP service: Label Studio's ML-backend protocol, progress and metrics (FastAPI).

Imports `backend.state`, never `gfsam`, `worker` or torch (docs/architecture.md §0).
"""
