"""``ExtractConfig``: Literal-typed fields are checked against their annotations, and the
split ``featbank.extract.job`` package keeps its public names."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from featbank.extract import decode, features
from featbank.extract.job import ExtractConfig, run_extraction
from featbank.extract.job.config import _literal_fields


def test_every_literal_field_rejects_an_unknown_value_naming_the_field_and_choices():
    fields = _literal_fields()
    assert {"sampler", "views", "last", "pool", "modality", "dtype", "device", "precision",
            "start_method", "manifest_format", "decoder"} <= set(fields)
    for key, allowed in fields.items():
        with pytest.raises(ValueError) as e:
            ExtractConfig(**{key: "bogus"})
        assert str(e.value).startswith(f"{key}: 'bogus'") and repr(list(allowed)) in str(e.value)
        ExtractConfig(**{key: allowed[-1]})  # every listed value is accepted


def test_literal_choices_are_the_ones_the_code_implements():
    fields = _literal_fields()
    assert fields["sampler"] == features.SAMPLER_NAMES
    assert fields["views"] == features.VIEW_NAMES
    assert fields["decoder"] == decode.BACKENDS


def test_crop_larger_than_resize_is_caught_at_config_time():
    with pytest.raises(ValueError, match="crop: 224 is larger than resize 200"):
        ExtractConfig(resize=200, crop=224)
    ExtractConfig(resize=224, crop=224)


@pytest.mark.parametrize("kw,msg", [({"fps": "fast"}, "fps"), ({"fps": -1.0}, "fps"), ({"clip_len": 0}, "clip_len"),
                                    ({"workers": -1}, "workers")])
def test_numeric_checks(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ExtractConfig(**kw)


def test_record_round_trip():
    cfg = ExtractConfig(manifest="m.txt", store="s", sampler="tsn", views="flip", fps=12.5)
    assert ExtractConfig.from_record(cfg.to_record()) == cfg
    assert callable(run_extraction)
    hints = typing.get_type_hints(ExtractConfig)
    assert all(f.name in hints for f in dataclasses.fields(ExtractConfig))
