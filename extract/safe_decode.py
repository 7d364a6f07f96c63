"""Decoding in a persistent worker process with a per-request timeout.

decord can hang or crash inside native code on some files (decord issues #373, #269, #363), where
no Python timeout reaches it. ``SafeDecoder`` sends each request to a worker process; when the
answer does not come within ``timeout_s`` the worker is killed (SIGKILL), a fresh one is started on
the next request, and ``DecodeError(kind="decode_timeout")`` is raised. A worker that dies
(segfault, abort) gives ``decode_crash``. The worker survives ordinary ``DecodeError``s, so one
process serves many videos.

The worker is a plain ``subprocess`` (``python -m featbank.extract.safe_decode``), not a
``multiprocessing`` child: it can be started from daemonic processes (decoding workers), never
forks a parent holding torch threads, and imports only numpy/PyAV/decord. Frames travel as raw
bytes over a pipe: a small pickled header, then the array's buffer received straight into the
parent's preallocated array (one copy).

Test-only hook: when the environment variable ``FEATBANK_DECODE_TEST_HOOK`` is
``"hang:<text>"`` or ``"crash:<text>"``, the worker sleeps forever / calls ``os.abort()`` on any
path whose file name contains ``<text>``. It exists so tests can show the timeout and crash
handling; it is read only inside the worker and has no other effect.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import numpy as np

from featbank.extract.decode_base import DEFAULT_WINDOW, Frames, VideoInfo
from featbank.extract.errors import DecodeError

TEST_HOOK_ENV = "FEATBANK_DECODE_TEST_HOOK"
STARTUP_TIMEOUT_S = 120.0  # worker start (imports) is not charged to a video's timeout


class SafeDecoder:
    """Decode videos in a worker process; a hung or crashing decoder costs at most ``timeout_s``.

    Not thread-safe: use one instance per thread / decoding worker. Picklable (the copy starts
    its own worker on first use).

    Args:
        timeout_s: Seconds one request (a whole ``decode`` call, or one window of
            ``iter_windows``) may take before the worker is killed.
        backend: Decode backend passed to ``open_video`` in the worker.
        threads: Decoder threads in the worker (0 = automatic).
        folder_fps: Frame rate assumed for frame folders.
    """

    def __init__(self, timeout_s: float = 120.0, backend: str = "auto", *, threads: int = 0, folder_fps: float = 30.0) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.backend = backend
        self.threads = threads
        self.folder_fps = folder_fps
        self._proc: subprocess.Popen | None = None
        self._send: Connection | None = None
        self._recv: Connection | None = None
        self.restarts = 0  # workers killed after a timeout or crash

    # ------------------------------------------------------------------ public API
    def decode(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float | None = None,
        modality: str = "rgb",
        indices: np.ndarray | None = None,
    ) -> Frames:
        """Decode a video (resampled to ``fps`` by index stepping) in the worker.

        Args:
            path: Video file, frame folder or image.
            fps: Target frame rate (None keeps the source rate).
            modality: ``"rgb"`` or ``"flow"``.
            indices: Optional positions into the sequence ``decode(path, fps=fps)`` would return
                (with ``fps=None``: source-frame indices); only those frames are decoded.

        Returns:
            Frames; ``Frames.indices`` are always source-frame indices.

        Raises:
            DecodeError: Any decode kind, plus ``decode_timeout`` / ``decode_crash``.
        """
        p = os.fspath(path)
        idx = None if indices is None else np.asarray(indices, dtype=np.int64)
        return self._request(p, ("decode", p, self._open_kw(modality), fps, idx))

    def probe(self, path: str | os.PathLike[str], *, modality: str = "rgb") -> VideoInfo:
        """``VideoInfo`` of an input, opened in the worker (same timeout and error kinds)."""
        p = os.fspath(path)
        return self._request(p, ("probe", p, self._open_kw(modality)))

    def iter_windows(
        self,
        path: str | os.PathLike[str],
        *,
        size: int = DEFAULT_WINDOW,
        fps: float | None = None,
        modality: str = "rgb",
    ) -> Iterator[Frames]:
        """Yield the (resampled) video in windows of at most ``size`` frames; bounded memory.

        The worker keeps the video open between windows; each window has its own ``timeout_s``.
        The concatenated windows equal ``decode(path, fps=fps)``.
        """
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        p = os.fspath(path)
        info, n = self._request(p, ("open", p, self._open_kw(modality), fps))
        try:
            for start in range(0, n, size):
                yield self._request(p, ("window", start, min(start + size, n)))
        finally:
            if self._proc is not None and self._proc.poll() is None:
                self._request(p, ("close",))

    def close(self) -> None:
        """Stop the worker (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and self._send is not None:
                self._send.send(("quit",))
                proc.wait(timeout=2.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_pipes()

    @property
    def worker_pid(self) -> int | None:
        """Process id of the current worker (None when not started)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def __enter__(self) -> "SafeDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: modules may already be gone
            pass

    def __getstate__(self) -> dict:
        return {"timeout_s": self.timeout_s, "backend": self.backend, "threads": self.threads, "folder_fps": self.folder_fps}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["timeout_s"], state["backend"], threads=state["threads"], folder_fps=state["folder_fps"])

    # ------------------------------------------------------------------ internals
    def _open_kw(self, modality: str) -> dict:
        return {"backend": self.backend, "modality": modality, "threads": self.threads, "folder_fps": self.folder_fps}

    def _start(self) -> None:
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        cmd = [sys.executable, "-m", "featbank.extract.safe_decode", str(p2c_r), str(c2p_w)]
        try:
            self._proc = subprocess.Popen(cmd, pass_fds=(p2c_r, c2p_w), stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(p2c_r)
            os.close(c2p_w)
        self._send = Connection(p2c_w, readable=False)
        self._recv = Connection(c2p_r, writable=False)
        if not self._recv.poll(STARTUP_TIMEOUT_S):
            self._kill()
            raise RuntimeError(f"decode worker did not start within {STARTUP_TIMEOUT_S:.0f} s")
        try:
            hello = self._recv.recv()
        except EOFError:
            code = self._proc.wait() if self._proc else None
            self._kill()
            raise RuntimeError(f"decode worker failed to start (exit code {code}); see its stderr") from None
        if hello != ("ready", os.getpid()):
            self._kill()
            raise RuntimeError(f"unexpected greeting from decode worker: {hello!r}")

    def _close_pipes(self) -> None:
        for c in (self._send, self._recv):
            if c is not None:
                c.close()
        self._send = self._recv = None

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_pipes()

    def _crash_error(self, path: str) -> DecodeError:
        code = self._proc.wait() if self._proc is not None else None
        self._kill()
        self.restarts += 1
        if code is not None and code < 0:
            try:
                why = f"signal {signal.Signals(-code).name}"
            except ValueError:
                why = f"signal {-code}"
        else:
            why = f"exit code {code}"
        return DecodeError(path, "decode_crash", f"decoder worker died ({why}); a fresh worker takes the next video")

    def _request(self, path: str, msg: tuple):
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:  # died while idle
                self._kill()
            self._start()
        assert self._send is not None and self._recv is not None
        deadline = time.monotonic() + self.timeout_s
        try:
            self._send.send(msg)
        except (BrokenPipeError, OSError):
            raise self._crash_error(path) from None
        try:
            if not self._recv.poll(max(0.0, deadline - time.monotonic())):
                self._kill()
                self.restarts += 1
                raise DecodeError(
                    path, "decode_timeout", f"no result within {self.timeout_s:g} s; the decoder worker was killed"
                )
            status, payload = self._recv.recv()
            if status == "err":
                raise payload
            if status == "frames":
                shape, times, indices = payload
                frames = np.empty(shape, dtype=np.uint8)
                if not self._recv.poll(max(0.0, deadline - time.monotonic())):
                    self._kill()
                    self.restarts += 1
                    raise DecodeError(path, "decode_timeout", f"frame transfer exceeded {self.timeout_s:g} s")
                if frames.nbytes:
                    self._recv.recv_bytes_into(memoryview(frames).cast("B"))
                else:
                    self._recv.recv_bytes()
                return Frames(frames, times, indices)
            return payload
        except (EOFError, ConnectionResetError, BrokenPipeError):
            raise self._crash_error(path) from None


# ---------------------------------------------------------------------- worker side
def _test_hook(path: str) -> None:
    """Test-only fault injection (see module docstring)."""
    hook = os.environ.get(TEST_HOOK_ENV, "")
    action, _, needle = hook.partition(":")
    if not needle or needle not in os.path.basename(path):
        return
    if action == "hang":
        while True:
            time.sleep(3600)
    if action == "crash":
        os.abort()


def _send_frames(conn: Connection, frames: Frames) -> None:
    arr = np.ascontiguousarray(frames.frames)
    conn.send(("frames", (arr.shape, frames.times, frames.indices)))
    conn.send_bytes(memoryview(arr).cast("B") if arr.nbytes else b"")


def _positions(n_frames: int, fps_src: float, fps: float | None, indices: np.ndarray | None) -> np.ndarray:
    from featbank.extract.decode import resample_indices

    idx = resample_indices(n_frames, fps_src, fps)
    if indices is None:
        return idx
    if indices.size and (indices.min() < 0 or indices.max() >= idx.shape[0]):
        raise ValueError(f"indices out of range [0, {idx.shape[0]}) of the resampled sequence")
    return idx[indices]


class _SourceCache:
    """The last video opened by ``decode`` requests, kept open for the next request on it.

    A job decodes one video in several index chunks; reusing the open source avoids re-opening
    (and, for PyAV, re-scanning) the file and lets consecutive chunks continue without a seek.
    The entry is dropped when another input is requested or the file changed (size, mtime).
    """

    def __init__(self, opener) -> None:
        self._open = opener
        self._key = None
        self._src = None

    def get(self, path: str, kw: dict):
        try:
            st = os.stat(path)
            key = (path, tuple(sorted(kw.items())), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None  # let open_video raise the typed error
        if key is not None and key == self._key:
            return self._src
        self.clear()
        self._src = self._open(path, **kw)
        self._key = key
        return self._src

    def clear(self) -> None:
        if self._src is not None:
            self._src.close()
        self._src = self._key = None


def _serve(conn_in: Connection, conn_out: Connection) -> None:
    from featbank.extract.decode import open_video

    conn_out.send(("ready", os.getppid()))
    cache = _SourceCache(open_video)
    src = None
    seq = None
    while True:
        try:
            msg = conn_in.recv()
        except EOFError:
            cache.clear()
            return  # parent went away
        op = msg[0]
        if op == "quit":
            cache.clear()
            return
        try:
            if op == "decode":
                _, path, kw, fps, indices = msg
                _test_hook(path)
                s = cache.get(path, kw)
                _send_frames(conn_out, s.read(_positions(s.info.n_frames, s.info.fps, fps, indices)))
                continue
            if op == "probe":
                _, path, kw = msg
                _test_hook(path)
                conn_out.send(("ok", cache.get(path, kw).info))
                continue
            if op == "open":
                _, path, kw, fps = msg
                _test_hook(path)
                if src is not None:
                    src.close()
                src = open_video(path, **kw)
                seq = _positions(src.info.n_frames, src.info.fps, fps, None)
                conn_out.send(("ok", (src.info, int(seq.shape[0]))))
                continue
            if op == "window":
                _, a, b = msg
                _send_frames(conn_out, src.read(seq[a:b]))
                continue
            if op == "close":
                if src is not None:
                    src.close()
                src = seq = None
                conn_out.send(("ok", None))
                continue
            raise ValueError(f"unknown decode worker request {op!r}")
        except Exception as e:  # noqa: BLE001 - every error goes back to the parent, typed when picklable
            cache.clear()  # a source that failed is not reused
            try:
                blob = pickle.dumps(e)
                pickle.loads(blob)
                conn_out.send(("err", e))
            except Exception:  # noqa: BLE001 - unpicklable exception: send its text
                conn_out.send(("err", RuntimeError(f"{type(e).__name__}: {e}")))


def _worker_main(argv: list[str]) -> None:
    # The parent handles Ctrl-C; the worker ends when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn_in = Connection(int(argv[0]), writable=False)
    conn_out = Connection(int(argv[1]), readable=False)
    _serve(conn_in, conn_out)


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
