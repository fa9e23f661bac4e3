"""backend.state.labelconfig: finding the BrushLabels/Image pair of a labeling config."""

from __future__ import annotations

import pytest

from backend.state.labelconfig import LabelConfigError, parse_label_config
from backend.state.schemas import LabelConfigSummary


def test_label_config_parsing() -> None:
    cfg = parse_label_config(
        '<View><Image name="img" value="$photo"/><Text name="t" value="$text"/>'
        '<BrushLabels name="txt" toName="t"><Label value="X"/></BrushLabels>'
        '<KeyPointLabels name="kp" toName="img" smart="true"><Label value="A"/></KeyPointLabels>'
        '<BrushLabels name="mask" toName="img"><Label value="A"/><Label value="B"/>'
        '<Label value="A"/></BrushLabels></View>'
    )
    assert cfg == LabelConfigSummary(
        from_name="mask", to_name="img", data_key="photo", labels=["A", "B"]
    )
    for bad, reason in [
        ('<View><Image name="i" value="$i"/></View>', "BrushLabels"),
        ('<View><Image name="i" value="$i"/><BrushLabels name="b" toName="i"/></View>', "Label"),
        (
            '<View><Image name="i" value="http://x/y.png"/><BrushLabels name="b" toName="i">'
            '<Label value="A"/></BrushLabels></View>',
            "value",
        ),
        ("<View><Image", "parse"),
    ]:
        with pytest.raises(LabelConfigError, match=reason):
            parse_label_config(bad)
