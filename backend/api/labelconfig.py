"""The label-config parser lives in `backend.state.labelconfig` (the worker reads the config
from Label Studio and parses it too); re-exported here for the HTTP side."""

from backend.state.labelconfig import LabelConfigError, config_digest, parse_label_config

__all__ = ["LabelConfigError", "config_digest", "parse_label_config"]
