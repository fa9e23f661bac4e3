"""Entry point kept for `uvicorn backend.app:create_app --factory` (see `backend.api.app`)."""

from backend.api.app import create_app

__all__ = ["create_app"]
