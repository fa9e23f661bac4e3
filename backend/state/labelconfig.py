"""Find the Image and the output controls of a Label Studio labeling config (label-studio-sdk
parser): BrushLabels, PolygonLabels and RectangleLabels on the first Image that has one. Other
controls (smart KeyPointLabels, Choices...) may coexist and are left alone.
"""

from __future__ import annotations

import hashlib
import logging

from label_studio_sdk.label_interface import LabelInterface

from backend.state.schemas import CONTROL_TAGS, LabelConfigSummary, OutputControl

logger = logging.getLogger(__name__)


class LabelConfigError(ValueError):
    """The labeling config cannot be used by this backend; the message is shown to the LS user."""


def parse_label_config(config: str) -> LabelConfigSummary:
    """Summarise a labeling config: the Image we predict for and its output controls.

    Output controls are the BrushLabels, PolygonLabels and RectangleLabels on the first Image
    that has any; a RectangleLabels with ``smart="true"`` (or ``smartOnly``) is a prompt tool
    when a brush or polygon control is there too. Each label belongs to the first control that
    lists it (a label predicted into one control only).

    Args:
        config: the `<View>...</View>` XML LS sends as /setup `schema` or /predict `label_config`.

    Returns:
        from_name (the first control's name), to_name (Image name), data_key (task.data key of
        the image, `$image` -> "image"), every label in config order and the controls.

    Raises:
        LabelConfigError: unparsable XML, no served control on an Image, a control without
            labels, or an Image whose value is not a `$variable`.
    """
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several unrelated types for bad XML
        raise LabelConfigError(f"cannot parse the labeling config: {exc}") from None
    images = {obj.name: obj for obj in interface.objects if obj.tag == "Image"}
    found: dict[str, list[OutputControl]] = {}
    smart_boxes: dict[str, list[OutputControl]] = {}
    for control in interface.controls:
        kind = CONTROL_TAGS.get(control.tag)
        targets = [name for name in control.to_name if name in images]
        if kind is None or not targets:
            continue
        labels = list(dict.fromkeys(control.labels or []))
        if not labels:
            raise LabelConfigError(f"<{control.tag} name={control.name!r}> has no <Label> values")
        out = OutputControl(name=control.name, kind=kind, labels=labels)
        attrs = {k.lower(): str(v).lower() for k, v in (control.attr or {}).items()}
        smart = attrs.get("smart") == "true" or attrs.get("smartonly") == "true"
        (smart_boxes if kind == "rectangle" and smart else found).setdefault(targets[0], []).append(
            out
        )
    for name in images:
        controls = found.get(name) or smart_boxes.get(name)
        if not controls:
            continue
        image = images[name]
        value = str(image.value or "")
        if not value.startswith("$") or len(value) < 2:
            raise LabelConfigError(
                f'<Image name={image.name!r}> needs value="$<key>", got {value!r}'
            )
        owned: list[str] = []
        served: list[OutputControl] = []
        for control in controls:  # a label belongs to the first control listing it
            mine = [lb for lb in control.labels if lb not in owned]
            if mine:
                served.append(control.model_copy(update={"labels": mine}))
                owned += mine
        controls = served
        prompts = smart_boxes.get(name, []) if found.get(name) else []
        return LabelConfigSummary(
            from_name=controls[0].name,
            to_name=image.name,
            data_key=value[1:],
            labels=owned,
            controls=controls,
            box_prompts=prompts,
        )
    raise LabelConfigError(
        "GF-SAM backend needs a <BrushLabels>, <PolygonLabels> or <RectangleLabels> control on "
        'an <Image> object, e.g. <Image name="image" value="$image"/>'
        '<BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>'
    )


def config_digest(config: str) -> str:
    """Short content hash of a config, to skip re-parsing an unchanged one."""
    return hashlib.sha256(config.encode("utf-8")).hexdigest()[:16]
