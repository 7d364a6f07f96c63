"""Synthetic *feature* sets of an image -> video run, written straight into a store (tests, bench).

No pixels and no backbone: each class has an image prototype and a clip prototype, and the
five feature sets of a CycDA run are drawn around them. Used by the recipe tests and by
``bench/cycle_heads.py`` at UCF101 scale; the pixel benchmark is ``synth_i2v``.
"""

from __future__ import annotations

import numpy as np

from featbank.store.base import FeatureStore


def write_synthetic_cycda_sets(store: FeatureStore, *, num_classes: int = 5, source_per_class: int = 20,
                               train_per_class: int = 10, test_per_class: int = 5, frames_per_video: int = 8,
                               clips_per_video: int = 4, dim: int = 32, clip_dim: int | None = None,
                               domain_shift: float = 1.0, noise: float = 1.0, seed: int = 0,
                               backbone: str = "synthetic", weights_id: str = "synthetic-v1",
                               dtype: str = "float16", prefix: str = "", n_train: int | None = None,
                               n_test: int | None = None, length_jitter: float = 0.0,
                               test_frames_per_video: int | None = None) -> dict[str, str]:
    """Write the five feature sets of a CycDA run with synthetic class structure.

    Source rows are prototype plus noise; target frames add a domain shift (a shared offset
    and a per-class distortion) and a quarter of uninformative frames; clip rows are their
    own prototype plus noise.

    Args:
        n_train / n_test: total target train / test videos (classes assigned round-robin);
            default ``num_classes * train_per_class`` / ``num_classes * test_per_class``.
        length_jitter: frames (and clips) per video drawn uniformly within ``+-`` this fraction.
        test_frames_per_video: frames per test video (default ``frames_per_video``).

    Returns:
        Role -> set name (the ``features.*`` keys of a CycDA config).
    """
    from featbank.store.schema import FeatureSetInfo, VideoMeta, VideoRows

    rng = np.random.default_rng(seed)
    clip_dim = dim if clip_dim is None else clip_dim
    proto = rng.standard_normal((num_classes, dim)).astype(np.float32) * 1.5
    clip_proto = rng.standard_normal((num_classes, clip_dim)).astype(np.float32) * 1.5
    offset = rng.standard_normal(dim).astype(np.float32) * domain_shift
    distort = rng.standard_normal((num_classes, dim)).astype(np.float32) * 0.5 * domain_shift
    names = {k: f"{prefix}{v}" for k, v in (("source_images", "source/image"), ("target_frames", "target_train/frame"),
                                             ("target_clips", "target_train/clip"), ("test_frames", "target_test/frame"),
                                             ("test_clips", "target_test/clip"))}
    sets = {}
    for key, name in names.items():
        level = "clip" if key.endswith("clips") else "frame"
        d = clip_dim if key.endswith("clips") else dim
        sets[key] = store.create_set(FeatureSetInfo(name, (d,), dtype=dtype, level=level, backbone=backbone,
                                                    weights_id=weights_id, endpoint="synthetic"))
    store.set_backbone_weights(backbone, weights_id)

    def rows(feats: np.ndarray) -> VideoRows:
        t = np.arange(len(feats), dtype=np.float64)
        return VideoRows(feats, t, t + 1.0)

    def noisy(n: int, d: int) -> np.ndarray:
        return noise * rng.standard_normal((n, d), dtype=np.float32)

    def length(base: int) -> int:
        if length_jitter <= 0:
            return base
        return max(1, int(rng.integers(round(base * (1 - length_jitter)), round(base * (1 + length_jitter)) + 1)))

    for c in range(num_classes):
        f = proto[c] + noisy(source_per_class, dim)
        for i in range(source_per_class):
            sets["source_images"].write_video(rows(f[i:i + 1]), VideoMeta(f"src_c{c}_{i:05d}", labels=(c,),
                                                                          split="train", domain="source"))
    totals = {"train": num_classes * train_per_class if n_train is None else n_train,
              "test": num_classes * test_per_class if n_test is None else n_test}
    for split, total in totals.items():
        fkey, ckey = ("target_frames", "target_clips") if split == "train" else ("test_frames", "test_clips")
        base = frames_per_video if split == "train" or test_frames_per_video is None else test_frames_per_video
        for i in range(total):
            c = i % num_classes
            vid = f"{split}_c{c}_{i // num_classes:05d}"
            n_f, n_c = length(base), length(clips_per_video)
            f = proto[c] + offset + distort[c] + noisy(n_f, dim)
            junk = rng.random(n_f) < 0.25  # frames that show nothing of the class
            f[junk] = offset + noisy(int(junk.sum()), dim)
            g = clip_proto[c] + noisy(n_c, clip_dim)
            meta = VideoMeta(vid, labels=(c,), split=split, domain="target", fps=25.0, n_frames=n_f)
            sets[fkey].write_video(rows(f), meta)
            sets[ckey].write_video(rows(g), meta)
    return names
