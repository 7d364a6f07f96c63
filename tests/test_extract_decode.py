"""Decoding: frame-exact indexing (decord vs PyAV vs what was written), resampling, windows with
bounded memory, frame folders, images, every typed failure kind, and the SafeDecoder worker."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
import tracemalloc

import av
import numpy as np
import pytest
from PIL import Image

from featbank.extract import decode as decode_mod
from featbank.extract.decode import SafeDecoder, decode_video, open_video, resample_indices
from featbank.extract.errors import DECODE_KINDS, DecodeError

FILE_BACKENDS = ("auto", "decord", "pyav")


# ---------------------------------------------------------------- synthetic inputs
def frame_pattern(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A frame that names its own index: three 16x16 grey blocks top-left hold its base-16 digits, noise elsewhere."""
    rng = np.random.default_rng(i)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for k in range(3):
        a[:16, 16 * k : 16 * (k + 1)] = ((i >> (4 * k)) & 15) * 16 + 8
    return a


def smooth_pattern(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Like ``frame_pattern`` with a smooth moving background instead of noise (for lossy codecs)."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([128 + 100 * np.sin(x / 6 + i / 2 + c) * np.cos(y / 9) for c in range(3)], -1).astype(np.uint8)
    for k in range(3):
        a[:16, 16 * k : 16 * (k + 1)] = ((i >> (4 * k)) & 15) * 16 + 8
    return a


def index_of(frame: np.ndarray) -> int:
    """Read back the index written by ``frame_pattern`` (tolerant to lossy codecs: +-7 grey levels)."""
    digits = [frame[4:12, 16 * k + 4 : 16 * k + 12].astype(np.float64).mean() for k in range(3)]
    return sum(int(np.clip((d - 8) / 16 + 0.5, 0, 15)) << (4 * k) for k, d in enumerate(digits))


def write_video(path, n: int, *, codec: str = "ffv1", pix_fmt: str = "bgr0", fps: int = 25, h: int = 48, w: int = 64,
                gop: int | None = None, options: dict | None = None, pattern=frame_pattern) -> np.ndarray:
    """Write ``n`` pattern frames with PyAV; returns the frames written (T, H, W, 3)."""
    frames = np.stack([pattern(i, h, w) for i in range(n)]) if n else np.zeros((0, h, w, 3), np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if gop is not None:
            s.codec_context.gop_size = gop
        if options:
            s.options = options
        c.start_encoding()
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    out = {}
    out["ffv1"] = (d / "lossless.mkv", write_video(d / "lossless.mkv", 60))
    out["x264rgb"] = (
        d / "lossless_gop.mp4",
        write_video(d / "lossless_gop.mp4", 300, codec="libx264rgb", pix_fmt="rgb24", gop=12, options={"qp": "0"}),
    )
    out["mjpeg"] = (d / "lossy.avi", write_video(d / "lossy.avi", 40, codec="mjpeg", pix_fmt="yuvj420p", fps=30, pattern=smooth_pattern))
    return out


# ---------------------------------------------------------------- frame-exact indexing
@pytest.mark.parametrize("name", ["ffv1", "x264rgb"])
@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_lossless_video_returns_exactly_the_requested_frames(videos, name, backend):
    path, written = videos[name]
    n = written.shape[0]
    # unsorted, duplicated, backwards and far jumps (seeks past key frames)
    idx = np.array([n - 1, 0, 5, 5, n // 2, 3, n - 2, 1, n // 3, n - 1], dtype=np.int64)
    with open_video(path, backend=backend) as src:
        assert src.info.n_frames == n and src.info.fps == pytest.approx(25.0)
        assert (src.info.height, src.info.width, src.info.channels) == (48, 64, 3)
        got = src.read(idx)
    assert got.frames.dtype == np.uint8 and got.frames.shape == (len(idx), 48, 64, 3)
    assert got.indices.dtype == np.int64 and np.array_equal(got.indices, idx)
    np.testing.assert_array_equal(got.frames, written[idx])
    np.testing.assert_allclose(got.times, idx / 25.0, atol=1e-4)


def test_decord_and_pyav_agree_on_random_access(videos):
    path, written = videos["x264rgb"]
    idx = np.random.default_rng(0).integers(0, written.shape[0], 50)
    with open_video(path, backend="decord") as d, open_video(path, backend="pyav") as p:
        a, b = d.read(idx), p.read(idx)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_allclose(a.times, b.times, atol=1e-4)
    assert [index_of(f) for f in b.frames] == idx.tolist()


def test_lossy_mjpeg_frames_identify_their_index(videos):
    path, written = videos["mjpeg"]
    idx = np.array([39, 0, 20, 7])
    for backend in ("decord", "pyav"):
        got = open_video(path, backend=backend).read(idx)
        assert [index_of(f) for f in got.frames] == idx.tolist()
        err_same = np.abs(got.frames.astype(int) - written[idx]).mean()
        err_next = np.abs(got.frames.astype(int) - written[(idx + 1) % 40]).mean()
        assert err_same < 0.6 * err_next  # JPEG error on the right frame, far below a neighbour's
        np.testing.assert_allclose(got.times, idx / 30.0, atol=1e-6)


def test_shared_clips_decord_and_pyav_agree(shared_data):
    expected = json.loads((shared_data / "clips" / "expected_i3d_k400.json").read_text())
    for name in ("clip_b.avi", "clip_c.mp4"):
        path = shared_data / "clips" / name
        with open_video(path, backend="decord") as d, open_video(path, backend="pyav") as p:
            assert d.info.n_frames == p.info.n_frames == expected[name]["source_frames"]
            assert d.info.fps == pytest.approx(expected[name]["source_fps"], rel=1e-3)
            # not the last frame of the AVI: decord misreads it after a seek in ~10 % of runs (see AutoSource)
            last = d.info.n_frames - (2 if name.endswith(".avi") else 1)
            idx = np.array([last, 0, 17, 3, d.info.n_frames // 2])
            a, b = d.read(idx), p.read(idx)
        # lossy codecs may differ by decoder build; the same frames differ by < 2 grey levels on average
        assert np.abs(a.frames.astype(np.int16) - b.frames).mean() < 2.0
        np.testing.assert_allclose(a.times, b.times, atol=2e-3)
        wrong = p.read(idx[::-1])  # a different frame is far off: the check above can fail
        assert np.abs(a.frames.astype(np.int16) - wrong.frames).mean() > 2.0


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_shared_h264_random_access_equals_sequential_decoding(shared_data, backend):
    # B-frames and key-frame seeks: random access must return the frames a linear pass returns
    path = shared_data / "clips" / "clip_a.mp4"
    with open_video(path, backend="pyav") as seq:
        whole = seq.read(np.arange(seq.info.n_frames)).frames
    idx = np.random.default_rng(0).integers(0, whole.shape[0], 30)
    with open_video(path, backend=backend) as src:
        got = src.read(idx).frames
    if backend == "pyav":
        np.testing.assert_array_equal(got, whole[idx])
    else:  # another FFmpeg build: allow tiny colour-conversion differences, never a wrong frame
        assert np.abs(got.astype(np.int16) - whole[idx]).mean() < 2.0


def test_auto_reads_avi_with_pyav(shared_data, videos):
    with open_video(shared_data / "clips" / "clip_b.avi") as src:
        assert src.info.backend == "pyav"
    with open_video(videos["mjpeg"][0]) as src:  # generated AVI too
        assert src.info.backend == "pyav"
    with open_video(shared_data / "clips" / "clip_c.mp4") as src:
        assert src.info.backend == "decord"


def test_shared_clips_resampled_frame_counts_match_reference(shared_data):
    expected = json.loads((shared_data / "clips" / "expected_i3d_k400.json").read_text())
    for name, ref in expected.items():
        with open_video(shared_data / "clips" / name) as src:
            idx = resample_indices(src.info.n_frames, src.info.fps, 25.0)
        assert idx.shape[0] == ref["frames_at_25fps"], name


# ---------------------------------------------------------------- resampling
def test_resample_indices_guide_rule():
    idx = resample_indices(300, 30.0, 25.0)
    assert idx.dtype == np.int64 and idx.shape == (250,)
    np.testing.assert_array_equal(idx[:7], [0, 1, 2, 3, 4, 6, 7])  # every 6th source frame is dropped
    np.testing.assert_array_equal(idx, np.floor(np.arange(0, 300, 1.2)).astype(np.int64))
    np.testing.assert_array_equal(resample_indices(5, 30.0, None), np.arange(5))
    np.testing.assert_array_equal(resample_indices(4, 10.0, 20.0), [0, 0, 1, 1, 2, 2, 3, 3])  # upsampling repeats
    np.testing.assert_array_equal(resample_indices(7, 25.0, 25.0), np.arange(7))
    assert resample_indices(300, 30000 / 1001, 25.0).shape == (251,)  # 300 / 1.1988 = 250.25 -> 251
    with pytest.raises(ValueError):
        resample_indices(10, 0.0, 25.0)


def test_decode_video_resamples_by_index_stepping(videos):
    path, written = videos["ffv1"]  # 60 frames at 25 fps
    got = decode_video(path, fps=10.0)
    want = resample_indices(60, 25.0, 10.0)
    np.testing.assert_array_equal(got.indices, want)
    np.testing.assert_array_equal(got.frames, written[want])
    np.testing.assert_allclose(got.times, want / 25.0, atol=1e-4)


# ---------------------------------------------------------------- windows, bounded memory
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_iter_windows_bounded_and_equal_to_whole_read(tmp_path, backend, monkeypatch):
    n, size = 3000, 200
    path = tmp_path / "long.mkv"
    write_video(path, n, h=16, w=64)
    with open_video(path, backend=backend) as src:
        assert src.info.n_frames == n
        whole = src.read(np.arange(n))
        biggest = []
        cls = type(src)
        orig = cls._read_sorted
        monkeypatch.setattr(cls, "_read_sorted", lambda self, u: (biggest.append(len(u)), orig(self, u))[1])
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        lengths, checksum = [], 0
        for win in src.iter_windows(size):
            lengths.append(len(win))
            assert np.array_equal(win.frames, whole.frames[win.indices])
            checksum += int(win.indices.sum())
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    frame_bytes = 16 * 64 * 3
    assert max(biggest) <= size and max(lengths) <= size and sum(lengths) == n
    assert checksum == n * (n - 1) // 2
    assert [index_of(f) for f in whole.frames[::97]] == list(range(0, n, 97))
    # the whole video is 9.2 MB; the windowed pass never holds more than a few windows' worth
    assert peak < 4 * size * frame_bytes + 300_000, peak


def test_iter_windows_with_indices(videos):
    path, written = videos["ffv1"]
    idx = resample_indices(60, 25.0, 12.5)
    with open_video(path) as src:
        wins = list(src.iter_windows(7, idx))
    assert [len(w) for w in wins] == [7, 7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate([w.frames for w in wins]), written[idx])


def test_read_rejects_out_of_range(videos):
    path, _ = videos["ffv1"]
    with open_video(path) as src:
        with pytest.raises(ValueError, match="out of range"):
            src.read(np.array([0, 60]))
        assert src.read(np.array([], dtype=np.int64)).frames.shape == (0, 48, 64, 3)


# ---------------------------------------------------------------- auto fallback
def test_auto_falls_back_to_pyav_when_decord_cannot_open(videos, monkeypatch):
    import featbank.extract.decode_decord as dd

    def broken(self, path, *, threads=0):
        raise DecodeError(path, "corrupt", "decord test failure")

    monkeypatch.setattr(dd.DecordSource, "__init__", broken)
    path, written = videos["ffv1"]
    with open_video(path) as src:
        assert src.info.backend == "pyav"
        np.testing.assert_array_equal(src.read([3, 1]).frames, written[[3, 1]])


def test_auto_falls_back_on_a_real_decord_failure(tmp_path):
    # decord 0.6 cannot copy rgb frames whose row size is not padded as it expects (48 px wide, bgr0 ffv1)
    path = tmp_path / "narrow.mkv"
    written = write_video(path, 20, h=16, w=48)
    with pytest.raises(DecodeError) as e:
        open_video(path, backend="decord")
    assert e.value.kind == "corrupt" and "PyAV can" in e.value.reason
    with open_video(path) as src:
        assert src.info.backend == "pyav"
        np.testing.assert_array_equal(src.read(np.arange(20)).frames, written)


def test_auto_falls_back_to_pyav_when_decord_fails_mid_read(videos, monkeypatch):
    import featbank.extract.decode_decord as dd

    path, written = videos["x264rgb"]
    src = open_video(path)
    assert src.info.backend == "decord"

    def broken(self, uniq):
        raise DecodeError(self.path, "corrupt", "decord test failure")

    monkeypatch.setattr(dd.DecordSource, "_read_sorted", broken)
    got = src.read([250, 2])
    assert src.info.backend == "pyav"
    np.testing.assert_array_equal(got.frames, written[[250, 2]])


# ---------------------------------------------------------------- frame folders and images
def _write_frames(folder, fmt: str, frames: np.ndarray, mode: str = "RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, start=1):
        Image.fromarray(f, mode=mode).save(folder / (fmt % i))


@pytest.mark.parametrize("fmt", ["img_%05d.png", "image_%05d.png", "%08d.png", "img_%05d.jpg"])
def test_frame_folder_layouts(tmp_path, fmt):
    frames = np.stack([frame_pattern(i, 32, 48) for i in range(12)])
    _write_frames(tmp_path / "v", fmt, frames)
    (tmp_path / "v" / "notes.txt").write_text("ignored")
    with open_video(tmp_path / "v", folder_fps=24.0) as src:
        assert (src.info.backend, src.info.n_frames, src.info.fps) == ("folder", 12, 24.0)
        got = src.read([11, 0, 4])
    if fmt.endswith(".png"):
        np.testing.assert_array_equal(got.frames, frames[[11, 0, 4]])
    assert [index_of(f) for f in got.frames] == [11, 0, 4]
    np.testing.assert_allclose(got.times, np.array([11, 0, 4]) / 24.0)


def test_flow_folder_gives_two_channels(tmp_path):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, (5, 20, 24), dtype=np.uint8)
    ys = rng.integers(0, 256, (5, 20, 24), dtype=np.uint8)
    _write_frames(tmp_path / "f", "x_%05d.png", xs, mode="L")
    _write_frames(tmp_path / "f", "y_%05d.png", ys, mode="L")
    got = decode_video(tmp_path / "f", modality="flow")
    assert got.frames.shape == (5, 20, 24, 2) and got.frames.dtype == np.uint8
    np.testing.assert_array_equal(got.frames[..., 0], xs)
    np.testing.assert_array_equal(got.frames[..., 1], ys)
    os.remove(tmp_path / "f" / "y_00005.png")
    with pytest.raises(DecodeError) as e:
        open_video(tmp_path / "f", modality="flow")
    assert e.value.kind == "corrupt" and "pairs" in e.value.reason


def test_shared_rawframes(shared_data):
    raw = shared_data / "rawframes"
    rgb = decode_video(raw)
    assert rgb.frames.shape[0] == 10 and rgb.frames.shape[-1] == 3
    flow = decode_video(raw, modality="flow")
    assert flow.frames.shape[0] == 5 and flow.frames.shape[-1] == 2
    first = np.asarray(Image.open(raw / "x_00001.jpg").convert("L"))
    np.testing.assert_array_equal(flow.frames[0, ..., 0], first)


def test_folder_failures(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DecodeError) as e:
        open_video(tmp_path / "empty")
    assert e.value.kind == "empty"
    frames = np.stack([frame_pattern(i, 16, 16) for i in range(3)])
    _write_frames(tmp_path / "bad", "img_%05d.jpg", frames)
    (tmp_path / "bad" / "img_00002.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    src = open_video(tmp_path / "bad")
    with pytest.raises(DecodeError) as e:
        src.read([0, 1, 2])
    assert e.value.kind in ("corrupt", "truncated") and "img_00002.jpg" in str(e.value)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_still_image_is_one_frame(tmp_path, ext):
    img = frame_pattern(7, 30, 48)
    Image.fromarray(img).save(tmp_path / f"still.{ext}")
    with open_video(tmp_path / f"still.{ext}") as src:
        assert (src.info.backend, src.info.n_frames, src.info.fps) == ("image", 1, 1.0)
        got = src.read([0, 0])
    assert got.frames.shape == (2, 30, 48, 3) and index_of(got.frames[0]) == 7
    if ext == "png":
        np.testing.assert_array_equal(got.frames[0], img)


# ---------------------------------------------------------------- typed failures
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, videos):
    d = tmp_path_factory.mktemp("bad")
    out = {}
    out["missing"] = d / "nope.mp4"
    out["corrupt"] = d / "random.mp4"
    out["corrupt"].write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    out["empty"] = d / "empty.mp4"
    out["empty"].write_bytes(b"")
    out["not_video"] = d / "notes.mp4"
    out["not_video"].write_text("this is a text file\n" * 50)
    out["zero_frames"] = d / "zero.avi"
    write_video(out["zero_frames"], 0, codec="mjpeg", pix_fmt="yuvj420p")
    out["unreadable"] = d / "fifo.mp4"
    os.mkfifo(out["unreadable"])
    full = d / "full.mp4"
    write_video(full, 100, codec="libx264rgb", pix_fmt="rgb24", options={"qp": "0"})
    blob = full.read_bytes()
    out["truncated"] = d / "cut.mp4"
    out["truncated"].write_bytes(blob[: len(blob) // 2])
    return out


@pytest.mark.parametrize("backend", FILE_BACKENDS)
@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty", "not_video", "zero_frames", "unreadable", "truncated"])
def test_each_failure_kind_is_typed(bad_files, kind, backend):
    path = bad_files[kind]
    t0 = time.monotonic()
    with pytest.raises(DecodeError) as e:
        with open_video(path, backend=backend) as src:
            src.read(np.arange(src.info.n_frames))
    assert time.monotonic() - t0 < 20
    expected = {"zero_frames"} if backend != "decord" else {"zero_frames", "corrupt"}
    assert e.value.kind == kind or (kind == "zero_frames" and e.value.kind in expected)
    assert e.value.path == str(path) and str(path) in str(e.value) and e.value.kind in str(e.value)


def test_audio_only_container_is_zero_frames(tmp_path):
    path = tmp_path / "audio.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate = 8000
        for p in list(s.encode(fr)) + list(s.encode()):
            c.mux(p)
    with pytest.raises(DecodeError) as e:
        open_video(path)
    assert e.value.kind == "zero_frames" and "no video stream" in e.value.reason


def test_permission_denied_is_unreadable(tmp_path, videos):
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not restrict reading")
    path = tmp_path / "locked.mkv"
    shutil.copy(videos["ffv1"][0], path)
    os.chmod(path, 0)
    with pytest.raises(DecodeError) as e:
        open_video(path)
    assert e.value.kind == "unreadable"


@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_shared_clip_cut_in_half_is_truncated(shared_data, tmp_path, backend):
    for name in ("clip_a.mp4", "clip_b.avi"):
        blob = (shared_data / "clips" / name).read_bytes()
        cut = tmp_path / name
        cut.write_bytes(blob[: len(blob) // 2])
        with pytest.raises(DecodeError) as e:
            with open_video(cut, backend=backend) as src:
                src.read(np.arange(src.info.n_frames))
        assert e.value.kind == "truncated", str(e.value)


def test_truncated_faststart_mp4_is_truncated(tmp_path):
    full = tmp_path / "fast.mp4"
    with av.open(str(full), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height = 64, 48
        for i in range(80):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_pattern(i), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    blob = full.read_bytes()
    assert blob.find(b"moov") < blob.find(b"mdat")  # index first: opens, then runs out of data
    cut = tmp_path / "fast_cut.mp4"
    cut.write_bytes(blob[: len(blob) // 2])
    for backend in FILE_BACKENDS:
        with pytest.raises(DecodeError) as e:
            with open_video(cut, backend=backend) as src:
                src.read(np.arange(src.info.n_frames))
        assert e.value.kind == "truncated", (backend, str(e.value))


def test_mkv_cut_at_half_decodes_as_the_shorter_video_it_is(tmp_path, videos):
    # MKV declares no frame count: a cut file is indistinguishable from a shorter video (documented)
    path, written = videos["ffv1"]
    blob = path.read_bytes()
    cut = tmp_path / "half.mkv"
    cut.write_bytes(blob[: len(blob) // 2])
    for backend in ("decord", "pyav"):
        with open_video(cut, backend=backend) as src:
            n = src.info.n_frames
            assert 0 < n < written.shape[0]
            np.testing.assert_array_equal(src.read(np.arange(n)).frames, written[:n])


def test_argument_errors_and_versions(videos):
    path, _ = videos["ffv1"]
    with pytest.raises(ValueError, match="flow"):
        open_video(path, modality="flow")
    with pytest.raises(ValueError, match="backend"):
        open_video(path, backend="opencv")
    with pytest.raises(DecodeError) as e:
        open_video(path, backend="folder")
    assert e.value.kind == "not_video"
    v = decode_mod.decoder_versions()
    assert v["pyav"].startswith(f"av {av.__version__}") and v["decord"].startswith("decord ")


def test_decode_error_kinds_are_validated():
    with pytest.raises(ValueError):
        DecodeError("x.mp4", "weird", "no such kind")
    e = pickle.loads(pickle.dumps(DecodeError("x.mp4", "corrupt", "bad")))
    assert (e.path, e.kind, e.reason) == ("x.mp4", "corrupt", "bad")
    assert set(DECODE_KINDS) >= {"missing", "not_video", "unreadable", "corrupt", "truncated", "empty",
                                 "zero_frames", "decode_timeout", "decode_crash"}


# ---------------------------------------------------------------- SafeDecoder
def test_safe_decoder_matches_in_process_decoding_and_keeps_its_worker(videos, bad_files):
    path, written = videos["x264rgb"]
    with SafeDecoder(timeout_s=60) as sd:
        a = sd.decode(path, fps=10.0)
        pid = sd.worker_pid
        ref = decode_video(path, fps=10.0)
        np.testing.assert_array_equal(a.frames, ref.frames)
        np.testing.assert_array_equal(a.indices, ref.indices)
        np.testing.assert_array_equal(a.times, ref.times)
        sub = sd.decode(path, fps=10.0, indices=np.array([5, 0, 119]))
        np.testing.assert_array_equal(sub.indices, ref.indices[[5, 0, 119]])
        np.testing.assert_array_equal(sub.frames, written[ref.indices[[5, 0, 119]]])
        with pytest.raises(DecodeError) as e:
            sd.decode(bad_files["corrupt"])
        assert e.value.kind == "corrupt"
        with pytest.raises(ValueError):
            sd.decode(path, indices=np.array([300]))
        wins = list(sd.iter_windows(path, size=64, fps=10.0))
        assert [len(w) for w in wins] == [64, 56]
        np.testing.assert_array_equal(np.concatenate([w.frames for w in wins]), ref.frames)
        assert sd.probe(path).n_frames == 300
        assert sd.worker_pid == pid and sd.restarts == 0  # one persistent worker for every request
    assert sd.worker_pid is None


def test_safe_decoder_timeout_kills_hung_worker_and_recovers(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATBANK_DECODE_TEST_HOOK", "hang:hangs_decoder")
    hung = tmp_path / "hangs_decoder.mkv"
    shutil.copy(videos["ffv1"][0], hung)
    with SafeDecoder(timeout_s=2.0) as sd:
        assert len(sd.decode(videos["ffv1"][0])) == 60  # worker started
        pid = sd.worker_pid
        t0 = time.monotonic()
        with pytest.raises(DecodeError) as e:
            sd.decode(hung)
        elapsed = time.monotonic() - t0
        assert e.value.kind == "decode_timeout" and e.value.path == str(hung)
        assert 1.9 <= elapsed < 6.0, elapsed
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the hung worker is gone
        got = sd.decode(videos["ffv1"][0], indices=np.array([3]))
        np.testing.assert_array_equal(got.frames[0], videos["ffv1"][1][3])
        assert sd.worker_pid not in (None, pid) and sd.restarts == 1


def test_safe_decoder_crash_is_reported_and_next_video_decodes(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("FEATBANK_DECODE_TEST_HOOK", "crash:kills_decoder")
    bad = tmp_path / "kills_decoder.mkv"
    shutil.copy(videos["ffv1"][0], bad)
    with SafeDecoder(timeout_s=30.0) as sd:
        t0 = time.monotonic()
        with pytest.raises(DecodeError) as e:
            sd.decode(bad)
        assert e.value.kind == "decode_crash" and "SIGABRT" in e.value.reason
        assert time.monotonic() - t0 < 30
        assert len(sd.decode(videos["ffv1"][0])) == 60
        assert sd.restarts == 1


def test_safe_decoder_chunked_requests_reuse_the_source_but_see_file_changes(tmp_path):
    path = tmp_path / "v.mkv"
    first = write_video(path, 30)
    with SafeDecoder(timeout_s=60, backend="pyav") as sd:
        chunks = [sd.decode(path, indices=np.arange(a, a + 10)) for a in (0, 10, 20)]
        np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), first)
        before = path.stat().st_mtime_ns
        second = write_video(path, 12, pattern=lambda i, h, w: frame_pattern(i + 500, h, w))  # same path, new content
        os.utime(path, ns=(before + 10**9, before + 10**9))  # a later mtime whatever the clock's granularity
        got = sd.decode(path)
        assert len(got) == 12 and [index_of(f) for f in got.frames] == list(range(500, 512))
        np.testing.assert_array_equal(got.frames, second)


class _DecodeInWorker:
    """Map-style dataset that decodes with a SafeDecoder created inside the DataLoader worker."""

    def __init__(self, path):
        self.path = str(path)

    def __len__(self):
        return 1

    def __getitem__(self, i):
        with SafeDecoder(timeout_s=60) as sd:  # daemonic process: multiprocessing children are not allowed
            return sd.decode(self.path, indices=np.array([2, 4])).frames


def test_safe_decoder_starts_inside_a_daemonic_dataloader_worker(videos):
    import torch.utils.data as tud

    path, written = videos["ffv1"]
    (batch,) = list(tud.DataLoader(_DecodeInWorker(path), batch_size=None, num_workers=1))
    np.testing.assert_array_equal(np.asarray(batch), written[[2, 4]])


def test_safe_decoder_pickles_without_its_worker(videos):
    sd = SafeDecoder(timeout_s=5.0, backend="pyav")
    clone = pickle.loads(pickle.dumps(sd))
    assert (clone.timeout_s, clone.backend, clone.worker_pid) == (5.0, "pyav", None)
    with clone:
        assert len(clone.decode(videos["ffv1"][0])) == 60
    assert decode_mod.SafeDecoder is SafeDecoder
