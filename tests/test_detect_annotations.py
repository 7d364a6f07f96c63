"""Annotation readers and per-step targets on a store's row grid."""

from __future__ import annotations

import numpy as np
import pytest

from featbank.experiments.config import ConfigError
from featbank.experiments.data.annotations import (
    VideoAnnotation,
    parse_charades_actions,
    read_annotations,
    read_charades_csv,
    read_segment_list,
    read_segments_csv,
    targets_for,
    write_charades_csv,
)

CSV = """id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length
46GP8,HR43,Kitchen,6,7,Yes,"A person cooks; then, eats",food;stove,"A person, cooking",c092 11.90 21.20;c147 0.00 12.60,24.83
N11GT,0KZ7,Stairs,6,7,Yes,walks,stairs,walks,,18.33
"""


def test_charades_csv_parsing(tmp_path):
    p = tmp_path / "Charades_v1_test.csv"
    p.write_text(CSV)
    anns = read_charades_csv(p)
    a = anns["46GP8"]
    assert a.length == pytest.approx(24.83)
    assert a.segments == ((11.9, 21.2, 92), (0.0, 12.6, 147))
    assert a.classes == (92, 147) and a.extra["scene"] == "Kitchen"
    assert anns["N11GT"].segments == () and anns["N11GT"].length == pytest.approx(18.33)
    assert read_annotations(p) == anns
    # round trip through the writer
    write_charades_csv(tmp_path / "w.csv", anns)
    again = read_charades_csv(tmp_path / "w.csv")
    assert again["46GP8"].segments == a.segments and again["N11GT"].segments == ()


def test_per_step_targets_on_constructed_video():
    ann = {"v": VideoAnnotation("v", 10.0, ((2.0, 5.0, 1), (4.0, 8.0, 0)))}
    starts = np.array([[0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9, np.nan, np.nan]])
    ends = starts + 1
    y = targets_for(starts, ends, ["v"], ann, num_classes=3)
    assert y.shape == (1, 12, 3)
    # row centres 0.5 .. 9.5; class 1 on [2, 5): rows 2, 3, 4; class 0 on [4, 8): rows 4..7
    assert np.flatnonzero(y[0, :, 1]).tolist() == [2, 3, 4]
    assert np.flatnonzero(y[0, :, 0]).tolist() == [4, 5, 6, 7]
    assert y[0, 10:].sum() == 0 and y[0, :, 2].sum() == 0  # padding and absent class
    with pytest.raises(ConfigError, match="no annotation"):
        targets_for(starts, ends, ["missing"], ann, 3)


def test_bad_actions_name_the_culprit(tmp_path):
    with pytest.raises(ConfigError, match="c9x"):
        parse_charades_actions("c9x 1 2")
    p = tmp_path / "bad.csv"
    p.write_text("id,actions,length\nA,c001 5.0 2.0,10\n")
    with pytest.raises(ConfigError, match="bad.csv:2.*ends before"):
        read_charades_csv(p)
    p.write_text("id,length\nA,10\n")
    with pytest.raises(ConfigError, match="actions"):
        read_charades_csv(p)


def test_segment_list_and_segments_csv(tmp_path):
    p = tmp_path / "multithumos.txt"
    p.write_text("# video start end class\nvid1 1.0 2.5 3\nvid1 0.5 4.0 Jump\nvid2 3 4 0\n")
    anns = read_segment_list(p, classes=["A", "B", "C", "D", "Jump"])
    assert anns["vid1"].segments == ((0.5, 4.0, 4), (1.0, 2.5, 3))
    assert anns["vid1"].length is None and anns["vid1"].duration == 4.0
    with pytest.raises(ConfigError, match="Jump"):
        read_segment_list(p)
    q = tmp_path / "segs.csv"
    q.write_text("video_id,start,end,label\nvid1,1.0,2.0,2\nvid3,0,1,1\n")
    anns = read_segments_csv(q)
    assert anns["vid1"].segments == ((1.0, 2.0, 2),) and set(anns) == {"vid1", "vid3"}
    assert read_annotations(q) == anns and read_annotations(p, classes=["A", "B", "C", "D", "Jump"])["vid2"].classes == (0,)
