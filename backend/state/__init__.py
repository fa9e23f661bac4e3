"""Project state shared by the HTTP service and the workers (docs/architecture.md §0).

Settings, the stored and queued data models, the Redis store and the enqueue API. Imports no
FastAPI, no torch, nothing of `worker` or `backend.api`.
"""
