"""What a job run reports: ``ExtractSummary`` (one process of the job) and ``VerifyReport``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExtractSummary:
    """What one process of the job did.

    Attributes:
        store: store path.
        feature_set: feature-set name.
        shard: ``(index, count)`` of this process (SLURM shard times torchrun rank).
        n_videos: videos in this process's shard.
        n_skipped: of those, already committed before the run (resume).
        n_written: videos written by this run.
        n_rows: rows written.
        n_frames: source frames decoded.
        seconds: wall time of the extraction loop.
        wait_seconds: part of it the model side spent waiting for decoded windows.
        startup_seconds: from the call of ``run_extraction`` to the start of the first model call
            (manifest, model build, engine set-up, set creation, first decoded windows).
        launch_seconds: from the launch of this process (interpreter start, imports included) to
            the start of the first model call; 0 where the process start time is unknown.
        failures: ``(video_id, kind, message)`` of each failed video.
        verify: the ``VerifyReport`` when ``cfg.verify`` > 0.
    """

    store: str
    feature_set: str
    shard: tuple[int, int] = (0, 1)
    n_videos: int = 0
    n_skipped: int = 0
    n_written: int = 0
    n_rows: int = 0
    n_frames: int = 0
    compacted: bool = False
    seconds: float = 0.0
    wait_seconds: float = 0.0
    startup_seconds: float = 0.0
    launch_seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    verify: "VerifyReport | None" = None

    @property
    def exit_code(self) -> int:
        """2 when any video failed (or verification exceeded its tolerance), else 0."""
        if self.failures:
            return 2
        if self.verify is not None and not self.verify.ok:
            return 1
        return 0

    def format(self) -> str:
        """Human-readable summary naming every failure."""
        rate = self.n_frames / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"feature set {self.feature_set!r} in {self.store} (shard {self.shard[0]}/{self.shard[1]}): "
            f"{self.n_written} written, {self.n_skipped} already committed, {len(self.failures)} failed "
            f"of {self.n_videos} videos; {self.n_rows} rows, {self.n_frames} frames in {self.seconds:.1f}s "
            f"({rate:.1f} frames/s, {self.wait_seconds:.1f}s waiting for decoding; computing started "
            f"{self.startup_seconds:.1f}s after start"
            + (f", {self.launch_seconds:.1f}s after launch)" if self.launch_seconds else ")")
            + ("; compacted" if self.compacted else "")
        ]
        for vid, kind, msg in self.failures:
            lines.append(f"  FAILED {vid} [{kind}]: {msg}")
        if self.verify is not None:
            lines.append(self.verify.format())
        return "\n".join(lines)


@dataclass
class VerifyReport:
    """Re-extraction check of committed videos.

    Attributes:
        feature_set: set name.
        video_ids: videos checked.
        max_abs_diff: largest absolute difference of any row value (0 when none checked).
        tolerance: the allowed maximum for the set's dtype and precision.
        per_video: max abs difference per video.
        failures: videos that could not be re-extracted.
    """

    feature_set: str
    video_ids: list[str]
    max_abs_diff: float
    tolerance: float
    per_video: dict[str, float] = field(default_factory=dict)
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.max_abs_diff <= self.tolerance

    def format(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        lines = [
            f"verify {self.feature_set!r}: {len(self.video_ids)} videos re-extracted, "
            f"max abs diff {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}) {verdict}"
        ]
        lines += [f"  {v}: {d:.3g}" for v, d in self.per_video.items() if d > self.tolerance]
        lines += [f"  FAILED {v} [{k}]: {m}" for v, k, m in self.failures]
        return "\n".join(lines)


def seconds_since_launch() -> float:
    """Wall seconds since this process started (Linux: ``/proc``; 0.0 elsewhere)."""
    import os

    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        # both since boot, to 10 ms (the boot time in /proc/stat is whole seconds: up to 1 s off)
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):
        return 0.0
