"""The batch extraction job: a manifest of videos -> one feature set of a store.

It is the only loop that turns pixels into stored rows. One module per job:

- ``config``       ``ExtractConfig`` (Literal-typed, validated) and ``default_set_name``;
- ``tasks``        the manifest as ``VideoTask`` s, and per-video costs for shard balancing;
- ``runtime``      device, the inference-ready model and its engine (``Pipeline``; the
                   runtime x precision choice itself is ``featbank.extract.engines``);
- ``provenance``   the feature set's schema and provenance (``set_info``);
- ``distributed``  torchrun ranks and barriers;
- ``loop``         decode workers -> packed batches -> model -> rows of each finished video;
- ``run``          ``run_extraction``: one process's shard into the store;
- ``verify``       ``verify_extraction``: re-extract a sample and compare with stored rows;
- ``report``       ``ExtractSummary`` and ``VerifyReport``.

``from featbank.extract.job import ExtractConfig, run_extraction`` is the public entry point.
"""

from .config import (
    DECODERS,
    DEVICES,
    MANIFEST_FORMATS,
    MODALITIES,
    PRECISIONS,
    RUNTIMES,
    START_METHODS,
    STORE_DTYPES,
    ExtractConfig,
    default_set_name,
    resolve_modality,
)
from .loop import consume, iterate, open_stream, read_windows
from .provenance import set_info, settings_differences
from .report import ExtractSummary, VerifyReport
from .run import run_extraction
from .runtime import (
    Pipeline,
    autocast_dtype_for,
    build_model,
    build_pipeline,
    prepare_engine,
    probe_pipeline,
    probe_rows,
    resolve_device,
)
from .tasks import duration_weights, load_tasks
from .verify import VERIFY_BF16_RTOL, VERIFY_RTOL, verify_extraction, verify_tolerance

__all__ = [
    "DECODERS",
    "DEVICES",
    "MANIFEST_FORMATS",
    "MODALITIES",
    "PRECISIONS",
    "RUNTIMES",
    "START_METHODS",
    "STORE_DTYPES",
    "VERIFY_BF16_RTOL",
    "VERIFY_RTOL",
    "ExtractConfig",
    "ExtractSummary",
    "Pipeline",
    "VerifyReport",
    "autocast_dtype_for",
    "build_model",
    "build_pipeline",
    "consume",
    "default_set_name",
    "duration_weights",
    "iterate",
    "load_tasks",
    "open_stream",
    "prepare_engine",
    "read_windows",
    "probe_pipeline",
    "probe_rows",
    "resolve_device",
    "resolve_modality",
    "run_extraction",
    "set_info",
    "settings_differences",
    "verify_extraction",
    "verify_tolerance",
]
