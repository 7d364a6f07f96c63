"""Dense optical flow with OpenCV, in the I3D flow convention, and flow frame folders.

Algorithms (``FlowConfig.algorithm``):

* ``dis``: Dense Inverse Search (Kroeger et al. 2016), ``cv2.DISOpticalFlow``; the default:
  fast on CPU and accurate enough for action features.
* ``farneback``: polynomial-expansion flow, ``cv2.calcOpticalFlowFarneback``.
* ``tvl1``: TV-L1 (the flow I3D's published flow weights were trained on); needs the contrib
  build (``pip install opencv-contrib-python-headless``); refused with that hint otherwise.

Convention (the I3D flow stream's, and denseflow's): flow in pixels per frame is clipped to
``[-bound, bound]`` (``bound = 20``) and scaled to ``[-1, 1]``; stored as uint8 it is
``round((f / bound + 1) * 127.5)``, so the decoders' ``x / 255 * 2 - 1`` gives back ``f / bound``
(to 1/255). A video of ``T`` frames has ``T - 1`` flow frames (frame ``t`` -> ``t + 1``).

Frame-folder layouts users already have:

* ``xy``: ``x_00001.jpg`` + ``y_00001.jpg`` (mmaction / denseflow; read by
  ``featbank.extract.decode_folder.FolderSource(modality="flow")``);
* ``uv``: ``u/000001.jpg`` + ``v/000001.jpg`` (the TV-L1 layout CFB's training reads,
  ``flow_16/CLASS/NAME/{u,v}/``).

Example:
    >>> frames = decode_video("clip.mp4").frames                # (T, H, W, 3) uint8
    >>> flow = dense_flow(frames, FlowConfig("dis"))            # (T-1, H, W, 2) float32 px
    >>> write_flow_frames("out/clip", quantize_flow(flow), layout="xy")
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from featbank.extract.errors import ExtractError

FLOW_ALGORITHMS = ("dis", "farneback", "tvl1")
FLOW_LAYOUTS = ("xy", "uv")
DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}
DONE_FILE = "flow.json"  # written last into a finished folder: its presence means "done" (resume)


class FlowError(ExtractError):
    """Flow cannot be computed as configured (unknown algorithm, missing OpenCV build, bad input)."""


@dataclass(frozen=True)
class FlowConfig:
    """Which dense flow and how it is scaled.

    Attributes:
        algorithm: ``dis``, ``farneback`` or ``tvl1``.
        bound: flow is clipped to ``[-bound, bound]`` pixels per frame before scaling (I3D: 20).
        dis_preset: DIS speed/quality preset: ``ultrafast``, ``fast`` or ``medium``.
        fb_pyr_scale: Farneback pyramid scale.
        fb_levels: Farneback pyramid levels.
        fb_winsize: Farneback averaging window.
        fb_iterations: Farneback iterations per level.
        fb_poly_n: Farneback polynomial neighbourhood.
        fb_poly_sigma: Farneback polynomial Gaussian sigma.
        tvl1_tau: TV-L1 time step.
        tvl1_lambda: TV-L1 data-term weight.
        tvl1_scales: TV-L1 pyramid scales.
        tvl1_warps: TV-L1 warps per scale.
        resize: compute flow on frames resized to this short side (0: native size); the flow is
            then measured in pixels of the resized frames.
    """

    algorithm: Literal["dis", "farneback", "tvl1"] = "dis"
    bound: float = 20.0
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    fb_pyr_scale: float = 0.5
    fb_levels: int = 3
    fb_winsize: int = 15
    fb_iterations: int = 3
    fb_poly_n: int = 5
    fb_poly_sigma: float = 1.2
    tvl1_tau: float = 0.25
    tvl1_lambda: float = 0.15
    tvl1_scales: int = 5
    tvl1_warps: int = 5
    resize: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in FLOW_ALGORITHMS:
            raise FlowError(f"flow algorithm {self.algorithm!r} not in {FLOW_ALGORITHMS}")
        if self.dis_preset not in DIS_PRESETS:
            raise FlowError(f"dis_preset {self.dis_preset!r} not in {tuple(DIS_PRESETS)}")
        if not self.bound > 0:
            raise FlowError(f"flow bound must be > 0 pixels, got {self.bound}")
        if self.resize < 0:
            raise FlowError(f"resize must be >= 0, got {self.resize}")

    def record(self) -> dict[str, Any]:
        """The parameters that matter for this algorithm, plus the OpenCV version (provenance)."""
        import cv2

        keep = {"algorithm", "bound", "resize"}
        prefix = {"dis": "dis_", "farneback": "fb_", "tvl1": "tvl1_"}[self.algorithm]
        d = {k: v for k, v in dataclasses.asdict(self).items() if k in keep or k.startswith(prefix)}
        d["opencv"] = cv2.__version__
        d["convention"] = f"clip to +-{self.bound:g} px, scale to [-1, 1]; uint8 = round((f/bound + 1) * 127.5)"
        return d


def tvl1_available() -> bool:
    """True when the OpenCV build has TV-L1 (``opencv-contrib-python(-headless)``)."""
    import cv2

    return hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow_create")


def available_algorithms() -> tuple[str, ...]:
    """The algorithms this OpenCV build can run."""
    return tuple(a for a in FLOW_ALGORITHMS if a != "tvl1" or tvl1_available())


def flow_function(cfg: FlowConfig) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``f(prev_gray, next_gray) -> (H, W, 2) float32`` flow in pixels (x right, y down).

    One OpenCV object is built per call of this function (they are not thread-safe: build one
    per worker).
    """
    import cv2

    if cfg.algorithm == "dis":
        dis = cv2.DISOpticalFlow_create(DIS_PRESETS[cfg.dis_preset])
        return lambda a, b: dis.calc(a, b, None)
    if cfg.algorithm == "farneback":
        args = (cfg.fb_pyr_scale, cfg.fb_levels, cfg.fb_winsize, cfg.fb_iterations, cfg.fb_poly_n, cfg.fb_poly_sigma, 0)
        return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, *args)
    if not tvl1_available():
        raise FlowError(f"flow algorithm 'tvl1' needs OpenCV's contrib build (this is opencv {cv2.__version__} "
                        "without cv2.optflow): pip install opencv-contrib-python-headless, or use 'dis'/'farneback'")
    tv = cv2.optflow.DualTVL1OpticalFlow_create(tau=cfg.tvl1_tau, lambda_=cfg.tvl1_lambda, nscales=cfg.tvl1_scales,
                                                warps=cfg.tvl1_warps)
    return lambda a, b: tv.calc(a, b, None)


def to_gray(frames: np.ndarray, resize: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 RGB -> ``(T, h, w)`` uint8 grey (optionally short side ``resize``)."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FlowError(f"flow needs (T, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    out = []
    for f in frames:
        g = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
        if resize:
            h, w = g.shape
            s = resize / min(h, w)
            g = cv2.resize(g, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_LINEAR)
        out.append(g)
    return np.stack(out)


def dense_flow(frames: np.ndarray, cfg: FlowConfig = FlowConfig(), fn: Callable | None = None) -> np.ndarray:
    """Flow between consecutive frames.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB, ``T >= 2``.
        cfg: algorithm and parameters.
        fn: a prepared :func:`flow_function` (reuse it across videos in one worker).

    Returns:
        ``(T - 1, h, w, 2)`` float32 flow in pixels (channel 0: x, channel 1: y), unclipped.
    """
    gray = to_gray(frames, cfg.resize)
    if len(gray) < 2:
        raise FlowError(f"flow needs at least 2 frames, got {len(gray)}")
    fn = fn or flow_function(cfg)
    return np.stack([fn(gray[t], gray[t + 1]) for t in range(len(gray) - 1)]).astype(np.float32)


def scale_flow(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Clip to ``[-bound, bound]`` pixels and scale to ``[-1, 1]`` (float32)."""
    return (np.clip(flow, -bound, bound) / bound).astype(np.float32)


def quantize_flow(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Pixel flow -> uint8 images: ``round((clip(f) / bound + 1) * 127.5)``."""
    return np.round((scale_flow(flow, bound) + 1.0) * 127.5).astype(np.uint8)


def dequantize_flow(images: np.ndarray) -> np.ndarray:
    """uint8 flow images -> ``[-1, 1]`` float32 (``x / 255 * 2 - 1``, what the I3D flow stream reads)."""
    return (np.asarray(images, np.float32) / 255.0 * 2.0 - 1.0).astype(np.float32)


def flow_as_frames(flow_u8: np.ndarray) -> np.ndarray:
    """``T - 1`` uint8 flow frames -> ``T`` frames (the last repeated), so flow lines up with RGB frames."""
    return np.concatenate([flow_u8, flow_u8[-1:]], axis=0)


# ---- frame folders ------------------------------------------------------------------------


def _flow_paths(folder: Path, layout: str, i: int, ext: str) -> tuple[Path, Path]:
    if layout == "xy":
        return folder / f"x_{i + 1:05d}.{ext}", folder / f"y_{i + 1:05d}.{ext}"
    if layout == "uv":
        return folder / "u" / f"{i + 1:06d}.{ext}", folder / "v" / f"{i + 1:06d}.{ext}"
    raise FlowError(f"flow layout {layout!r} not in {FLOW_LAYOUTS}")


def write_flow_frames(folder: str | os.PathLike, flow_u8: np.ndarray, *, layout: str = "xy", ext: str = "jpg",
                      quality: int = 95) -> list[Path]:
    """Write ``(N, H, W, 2)`` uint8 flow as grey image pairs.

    Args:
        folder: the video's flow folder (created).
        flow_u8: from :func:`quantize_flow`.
        layout: ``xy`` (``x_00001.jpg``/``y_00001.jpg``) or ``uv`` (``u/000001.jpg``/``v/000001.jpg``).
        ext: ``jpg`` (lossy, as the usual tools write) or ``png`` (lossless).
        quality: JPEG quality.

    Returns:
        The written paths (x/u first for each frame).
    """
    import cv2

    flow_u8 = np.asarray(flow_u8)
    if flow_u8.ndim != 4 or flow_u8.shape[-1] != 2 or flow_u8.dtype != np.uint8:
        raise FlowError(f"write_flow_frames needs (N, H, W, 2) uint8, got {flow_u8.shape} {flow_u8.dtype}")
    if ext not in ("jpg", "png"):
        raise FlowError(f"flow image extension {ext!r} not in ('jpg', 'png')")
    folder = Path(folder)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == "jpg" else []
    written = []
    for i, f in enumerate(flow_u8):
        for p, ch in zip(_flow_paths(folder, layout, i, ext), (0, 1)):
            p.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(p), np.ascontiguousarray(f[..., ch]), params):
                raise FlowError(f"could not write flow image {p}")
            written.append(p)
    return written


def read_flow_frames(folder: str | os.PathLike, layout: str = "xy") -> np.ndarray:
    """Read a flow folder of either layout back as ``(N, H, W, 2)`` uint8."""
    import cv2

    folder = Path(folder)
    if layout == "xy":
        xs = sorted(p for p in folder.iterdir() if p.name.startswith("x_"))
        ys = sorted(p for p in folder.iterdir() if p.name.startswith("y_"))
    elif layout == "uv":
        xs, ys = sorted((folder / "u").iterdir()), sorted((folder / "v").iterdir())
    else:
        raise FlowError(f"flow layout {layout!r} not in {FLOW_LAYOUTS}")
    if not xs or len(xs) != len(ys):
        raise FlowError(f"{folder}: {len(xs)} x/u and {len(ys)} y/v flow images (expected equal, > 0)")
    return np.stack([np.stack([cv2.imread(str(a), cv2.IMREAD_GRAYSCALE), cv2.imread(str(b), cv2.IMREAD_GRAYSCALE)], -1)
                     for a, b in zip(xs, ys)])


@dataclass
class FlowSummary:
    """What :func:`extract_flow_folders` did."""

    done: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)  # already finished (resume)
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (video id, error)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 2 if self.failures else 0


def _flow_one(args: tuple[str, str, FlowConfig, str, str, int, float | None]) -> tuple[str, str | None]:
    """Worker: decode one video, compute its flow, write the folder; returns (out folder, error)."""
    from featbank.extract.decode import decode_video

    path, out, cfg, layout, ext, quality, fps = args
    try:
        frames = decode_video(path, fps=fps).frames
        flow = dense_flow(frames, cfg)
        write_flow_frames(out, quantize_flow(flow, cfg.bound), layout=layout, ext=ext, quality=quality)
        record = {"source": os.path.abspath(path), "frames": int(len(frames)), "flow_frames": int(len(flow)),
                  "layout": layout, "flow": cfg.record()}
        tmp = Path(out) / (DONE_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, Path(out) / DONE_FILE)
        return out, None
    except Exception as e:  # recorded per video; the batch goes on and fails loudly at the end
        return out, f"{type(e).__name__}: {e}"


def extract_flow_folders(items: Sequence[tuple[str, str]], out_root: str | os.PathLike, cfg: FlowConfig = FlowConfig(),
                         *, layout: str = "xy", ext: str = "jpg", quality: int = 95, fps: float | None = None,
                         workers: int = 0, shard: tuple[int, int] = (0, 1), progress: bool = False) -> FlowSummary:
    """Flow frame folders for many videos (resumable, failures logged, optional workers and shards).

    Args:
        items: ``(video_id, path)`` pairs; each gets the folder ``out_root/video_id``.
        out_root: output root.
        cfg: flow algorithm and parameters.
        layout, ext, quality: as for :func:`write_flow_frames`.
        fps: resample the RGB frames to this rate before flow (None: source rate).
        workers: processes (0: in this process).
        shard: ``(index, count)``: this process does items ``index::count``.
        progress: tqdm bar.

    Returns:
        A summary; ``out_root/failures.jsonl`` lists the failed videos with their errors.
    """
    from tqdm.auto import tqdm

    if layout not in FLOW_LAYOUTS:
        raise FlowError(f"flow layout {layout!r} not in {FLOW_LAYOUTS}")
    if cfg.algorithm == "tvl1" and not tvl1_available():
        flow_function(cfg)  # raises the install hint before any work
    t0 = time.perf_counter()
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    index, count = shard
    summary = FlowSummary()
    todo = []
    for vid, path in list(items)[index::count]:
        out = root / vid
        if (out / DONE_FILE).is_file():
            summary.skipped.append(vid)
        else:
            todo.append((vid, (path, str(out), cfg, layout, ext, quality, fps)))
    by_out = {a[1]: vid for vid, a in todo}
    bar = tqdm(total=len(todo), desc="flow", unit="video", disable=not progress)
    if workers > 0 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_flow_one, [a for _, a in todo])
            for out, err in results:
                (summary.failures.append((by_out[out], err)) if err else summary.done.append(by_out[out]))
                bar.update(1)
    else:
        for _, a in todo:
            out, err = _flow_one(a)
            (summary.failures.append((by_out[out], err)) if err else summary.done.append(by_out[out]))
            bar.update(1)
    bar.close()
    if summary.failures:
        with open(root / "failures.jsonl", "a") as f:
            for vid, err in summary.failures:
                f.write(json.dumps({"video_id": vid, "error": err}) + "\n")
    summary.seconds = time.perf_counter() - t0
    return summary


# ---- flow-stream weights when no flow checkpoint is at hand ---------------------------------

FIRST_CONV = "Conv3d_1a_7x7.conv3d.weight"


def flow_weights_from_rgb(state_dict: dict, in_channels: int = 2) -> dict:
    """An I3D flow state dict from an RGB one: the first conv averaged over colour channels and
    repeated for the flow channels (the cross-modality initialisation of TSN); all else as is.

    A stand-in, not flow weights: real ones (pytorch-i3d ``flow_imagenet.pt`` /
    ``flow_charades.pt``) load with ``create_backbone("i3d-flow", weights=PATH)``.
    """
    if FIRST_CONV not in state_dict:
        raise FlowError(f"not an I3D state dict: no {FIRST_CONV!r}")
    out = dict(state_dict)
    w = state_dict[FIRST_CONV]  # (64, 3, kt, kh, kw)
    out[FIRST_CONV] = w.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1, 1).contiguous()  # -> (64, 2, ...)
    return out


def write_flow_weights_from_k400(path: str | os.PathLike) -> Path:
    """Write :func:`flow_weights_from_rgb` of the cached Kinetics-400 RGB I3D to ``path`` (a
    pytorch-i3d-layout file ``create_backbone("i3d-flow", weights=path)`` loads)."""
    import torch

    from featbank.extract.weights import i3d_k400_state_dict

    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        sd, _ = i3d_k400_state_dict()
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(flow_weights_from_rgb(sd), tmp)
        os.replace(tmp, path)
    return path


# ---- flow computed in memory inside the extraction job --------------------------------------


def flow_read_plan(indices: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB frame pairs ``(a, b)`` whose flow stands for each requested index.

    Index ``i`` is the flow ``i -> i + 1``; the last frame (which has no successor) repeats
    the flow ``n - 2 -> n - 1``, so a video of ``n`` frames gives ``n`` flow frames on the same
    time grid as its RGB frames (a one-frame video gives zero flow).
    """
    idx = np.asarray(indices, np.int64)
    a = np.minimum(idx, max(n_frames - 2, 0))
    b = np.minimum(a + 1, n_frames - 1)
    return a, b


def flow_frames_at(read: Callable[[np.ndarray], Any], indices: np.ndarray, n_frames: int, cfg: FlowConfig,
                   fn: Callable | None = None):
    """Decoded RGB -> uint8 flow frames at source ``indices``, for the I3D flow stream.

    Args:
        read: reads RGB source frames, ``read(sorted unique indices) -> Frames`` (the decoder's ``read``).
        indices: requested source indices (sorted, unique, as the job asks).
        n_frames: frames in the video.
        cfg: flow algorithm and parameters.
        fn: a prepared :func:`flow_function` (reuse it across calls in one worker).

    Returns:
        ``Frames`` with ``(K, h, w, 2)`` uint8 flow (``quantize_flow``) and the requested indices' times.
    """
    from featbank.extract.decode_base import Frames

    idx = np.asarray(indices, np.int64)
    a, b = flow_read_plan(idx, n_frames)
    need = np.unique(np.concatenate([a, b, idx]))
    rgb = read(need)
    pos = {int(s): k for k, s in enumerate(np.asarray(rgb.indices, np.int64))}
    gray = to_gray(rgb.frames, cfg.resize)
    fn = fn or flow_function(cfg)
    flow = np.stack([quantize_flow(fn(gray[pos[int(i)]], gray[pos[int(j)]]), cfg.bound) for i, j in zip(a, b)])
    times = np.asarray(rgb.times)[[pos[int(i)] for i in idx]]
    return Frames(flow, times, idx)
