"""Find the BrushLabels/Image pair of a Label Studio labeling config (label-studio-sdk parser).

The first `<BrushLabels>` whose `toName` is an `<Image>` wins; further pairs are ignored (we
predict one brush layer per project). Other controls (smart KeyPointLabels, Choices...) may
coexist and are left alone.
"""

from __future__ import annotations

import hashlib
import logging

from label_studio_sdk.label_interface import LabelInterface

from backend.state.schemas import LabelConfigSummary

logger = logging.getLogger(__name__)


class LabelConfigError(ValueError):
    """The labeling config cannot be used by this backend; the message is shown to the LS user."""


def parse_label_config(config: str) -> LabelConfigSummary:
    """Summarise a labeling config for brush prediction.

    Args:
        config: the `<View>...</View>` XML LS sends as /setup `schema` or /predict `label_config`.

    Returns:
        from_name (BrushLabels name), to_name (Image name), data_key (task.data key of the image,
        `$image` -> "image") and the label values in config order.

    Raises:
        LabelConfigError: unparsable XML, no BrushLabels on an Image, no labels, or an Image whose
            value is not a `$variable`.
    """
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several unrelated types for bad XML
        raise LabelConfigError(f"cannot parse the labeling config: {exc}") from None
    images = {obj.name: obj for obj in interface.objects if obj.tag == "Image"}
    for control in interface.controls:
        if control.tag != "BrushLabels":
            continue
        targets = [name for name in control.to_name if name in images]
        if not targets:
            continue
        image = images[targets[0]]
        value = str(image.value or "")
        if not value.startswith("$") or len(value) < 2:
            raise LabelConfigError(
                f'<Image name={image.name!r}> needs value="$<key>", got {value!r}'
            )
        labels = list(dict.fromkeys(control.labels or []))
        if not labels:
            raise LabelConfigError(f"<BrushLabels name={control.name!r}> has no <Label> values")
        return LabelConfigSummary(
            from_name=control.name, to_name=image.name, data_key=value[1:], labels=labels
        )
    raise LabelConfigError(
        "GF-SAM backend needs a <BrushLabels> control on an <Image> object, e.g. "
        '<Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="Object"/></BrushLabels>'
    )


def config_digest(config: str) -> str:
    """Short content hash of a config, to skip re-parsing an unchanged one."""
    return hashlib.sha256(config.encode("utf-8")).hexdigest()[:16]
