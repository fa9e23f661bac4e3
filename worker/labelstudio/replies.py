"""Label Studio REST replies as typed models, parsed once at the client boundary.

Only the fields the workers read are declared; LS sends many more, which are ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class LSReply(BaseModel):
    """Base of every model read from the LS REST API: unknown fields are dropped."""

    model_config = ConfigDict(extra="ignore")


class LSTask(LSReply):
    """One row of `GET /api/tasks/`."""

    id: int
    project: int | None = None
    data: dict[str, Any] = {}
    total_annotations: int = 0
    cancelled_annotations: int = 0
    is_labeled: bool = False

    def image_url(self, data_key: str) -> str | None:
        """The task's image URL under `data_key`, or None when it has none."""
        value = self.data.get(data_key)
        return value if isinstance(value, str) and value else None

    @property
    def annotated(self) -> bool:
        """Has at least one annotation that was not cancelled (skipped)."""
        return self.total_annotations > 0


class LSAnnotation(LSReply):
    """`GET /api/annotations/{id}/` or one item of `GET /api/tasks/{id}/annotations/`."""

    id: int
    task: int | None = None
    result: list[dict[str, Any]] | None = None
    was_cancelled: bool = False
    created_at: str | None = None
    updated_at: str | None = None
    parent_prediction: int | None = None


class LSPrediction(LSReply):
    """`GET /api/predictions/...` items and the reply of `POST /api/predictions/`."""

    id: int
    task: int | None = None
    result: list[dict[str, Any]] | None = None
    score: float | None = None
    model_version: str | None = None


class LSProject(LSReply):
    """`GET /api/projects/{id}/`: the label config we predict for comes from here only."""

    id: int
    label_config: str = ""
