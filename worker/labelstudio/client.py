"""Label Studio REST client for the workers: tasks, projects, annotations and predictions.

`LabelStudioClient` = the transport (`worker.labelstudio.transport`: authentication, timeouts, typed
errors), media downloads (`worker.labelstudio.media_download`) and the REST calls below, one per
noun. Errors
live in `worker.labelstudio.errors`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from worker.labelstudio.errors import (
    LabelStudioError,
    LabelStudioNotFound,
)
from worker.labelstudio.media_download import MediaClient
from worker.labelstudio.replies import LSAnnotation, LSPrediction, LSProject, LSTask
from worker.labelstudio.transport import parse, parse_list

logger = logging.getLogger(__name__)


class LabelStudioClient(MediaClient):
    """Thin, typed Label Studio REST client (one per worker process; thread-safe).

    Args:
        url: Label Studio base URL (``LABEL_STUDIO_URL``), e.g. ``http://ls:8080``.
        api_key: legacy token or Personal Access Token (``LABEL_STUDIO_API_KEY``).
        timeout: connect and read timeout of every request, in seconds.
        max_bytes: largest media file ``download`` accepts.
        media_policy: hosts and addresses ``download`` may fetch (None: any, no checks).
        media_deadline_s: total time of one ``download``, redirects included.
    """

    # ------------------------------------------------------------------ tasks, annotations

    def list_tasks(self, project: int, *, page_size: int = 100) -> list[LSTask]:
        """All tasks of a project, following pagination, in LS's default order."""
        tasks: list[LSTask] = []
        page = 1
        while True:
            params = {"project": int(project), "page": page, "page_size": page_size}
            reply = self._json("GET", "/api/tasks/", params=params)
            if not isinstance(reply, dict):
                raise LabelStudioError(
                    f"/api/tasks/: expected an object, got {type(reply).__name__}"
                )
            batch = reply.get("tasks") or []
            tasks += [parse(LSTask, task, "/api/tasks/") for task in batch]
            if not batch or len(tasks) >= int(reply.get("total", 0)):
                return tasks
            page += 1

    def get_task(self, task_id: int, project: int | None = None) -> LSTask:
        """One task as LS stores it (data, project).

        With `project`, read through the task list filtered to this one task: LS answers
        `GET /api/tasks/{id}/` of a task without predictions by first calling our /predict
        synchronously (it is what opening a task does), which a worker must never wait for.
        A task of another project is then simply not found.

        Raises:
            LabelStudioNotFound: no such task (in `project`).
        """
        if project is None:
            path = f"/api/tasks/{int(task_id)}/"
            return parse(LSTask, self._json("GET", path), path)
        selected = {"selectedItems": {"all": False, "included": [int(task_id)]}}
        params = {"project": int(project), "query": json.dumps(selected), "page_size": 1}
        reply = self._json("GET", "/api/tasks/", params=params)
        batch = reply.get("tasks") if isinstance(reply, dict) else None
        found = [t for t in batch or [] if isinstance(t, dict) and t.get("id") == int(task_id)]
        if not found:
            raise LabelStudioNotFound(
                f"task {int(task_id)} is not in project {project} (or is gone)"
            )
        task = parse(LSTask, found[0], "/api/tasks/")
        return task.model_copy(update={"project": task.project or int(project)})

    def get_project(self, project: int) -> LSProject:
        """A project's id and label config; raises LabelStudioNotFound for an unknown id."""
        path = f"/api/projects/{int(project)}/"
        return parse(LSProject, self._json("GET", path), path)

    def update_label_config(self, project: int, label_config: str) -> LSProject:
        """Replace a project's label config (`PATCH /api/projects/{id}/`); returns the project
        as LS stored it. LS refuses (400) a config that existing annotations do not fit.

        Raises:
            LabelStudioNotFound: unknown project.
            LabelStudioError: refused, or a reply of the wrong shape.
        """
        path = f"/api/projects/{int(project)}/"
        reply = self._json("PATCH", path, json={"label_config": label_config})
        return parse(LSProject, reply, path)

    def get_annotation(self, annotation_id: int) -> LSAnnotation | None:
        """One annotation, or None when it no longer exists."""
        path = f"/api/annotations/{int(annotation_id)}/"
        try:
            return parse(LSAnnotation, self._json("GET", path), path)
        except LabelStudioNotFound:
            return None

    def list_annotations(self, task_id: int) -> list[LSAnnotation]:
        """All annotations of a task (including cancelled ones; check ``was_cancelled``)."""
        path = f"/api/tasks/{int(task_id)}/annotations/"
        return [parse(LSAnnotation, ann, path) for ann in parse_list(self._json("GET", path), path)]

    # ------------------------------------------------------------------ predictions

    def model_versions(self, project: int) -> dict[str, int]:
        """Prediction count per model_version in a project (one request, any project size)."""
        return dict(self._json("GET", f"/api/projects/{int(project)}/model-versions/"))

    def task_predictions(self, task_id: int) -> list[LSPrediction]:
        """All predictions stored for a task."""
        path = "/api/predictions/"
        reply = self._json("GET", path, params={"task": int(task_id)})
        return [parse(LSPrediction, pred, path) for pred in parse_list(reply, path)]

    def create_prediction(
        self, task_id: int, result: list[dict[str, Any]], score: float, model_version: str
    ) -> int:
        """Store a prediction (deferred path); returns its id.

        Args:
            task_id: LS task id.
            result: result regions, e.g. from ``worker.labelstudio.brush_rle.masks_to_result``.
            score: prediction-level score.
            model_version: must equal the version ``/setup`` currently returns, or LS hides it.
        """
        body = {
            "task": int(task_id),
            "result": result,
            "score": float(score),
            "model_version": model_version,
        }
        path = "/api/predictions/"
        created = parse(LSPrediction, self._json("POST", path, json=body), path)
        logger.info("created prediction %s for task %s (%s)", created.id, task_id, model_version)
        return created.id

    def get_prediction(self, prediction_id: int) -> LSPrediction | None:
        """One prediction, or None when it no longer exists."""
        path = f"/api/predictions/{int(prediction_id)}/"
        try:
            return parse(LSPrediction, self._json("GET", path), path)
        except LabelStudioNotFound:
            return None
