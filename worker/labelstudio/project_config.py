"""A project's label config, read from Label Studio (never from a request body; issue 7).

The API only hints that a config may have changed (/setup, /predict, events); the sync and the
config-check jobs call `refresh_config`, which reads `GET /api/projects/{id}/`. A project is
registered (`projects`, `p:{p}:config`) only here, once Label Studio has confirmed it.
"""

from __future__ import annotations

import logging

from backend.state.labelconfig import LabelConfigError, config_digest, parse_label_config
from backend.state.schemas import LabelConfigSummary
from backend.state.store import Store
from worker.labelstudio.client import LabelStudioClient

logger = logging.getLogger(__name__)


def refresh_config(
    ls: LabelStudioClient, store: Store, p: int
) -> tuple[LabelConfigSummary | None, bool]:
    """Store the project's config as Label Studio holds it.

    Returns:
        (the summary, or None when the config has no usable BrushLabels/Image pair; whether it
        changed materially from a stored one, i.e. the version must move).

    Raises:
        LabelStudioNotFound: LS has no such project (nothing is stored).
    """
    project = ls.get_project(p)
    digest = config_digest(project.label_config)
    before = store.data.config(p)
    if before is not None and store.data.config_digest(p) == digest:
        return before, False
    try:
        summary = parse_label_config(project.label_config)
    except LabelConfigError as exc:
        logger.info("project %s: config not usable (%s)", p, exc)
        return None, False
    store.data.put_config(p, summary, digest)
    changed = before is not None and before != summary
    if changed:
        logger.info("project %s: label config changed in Label Studio", p)
    return summary, changed
