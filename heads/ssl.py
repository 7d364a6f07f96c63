"""Multi-level self-supervised heads and losses (Qian et al., ICCV 2021, "Enhancing
Self-supervised Video Representation Learning via Multi-level Feature Optimization").

The method reads three levels of a 3D CNN (R3D-18: ``layer2`` = low 128 ch, ``layer3`` = mid
256 ch, ``layer4`` = high 512 ch), each spatially pooled with time kept ``(C, T)``, for three
views of a video: two consecutive local clips (frames 0:16 and 16:32) and a global clip
(every 2nd frame of 0:32). The released defaults are reproduced here (``MLOWeights``):

* **instance contrast** (``lhigh``): high-level projections of the two local views are
  positives of each other, every view of every other video in the (gathered) batch is a
  negative; multi-positive InfoNCE, temperature 0.07 (:func:`multi_positive_infonce`).
* **local-global timestamp matching** (``lfine``, ``lfmid``, ``lflow``): the two local clips,
  time-pooled to ``T/2`` steps each and concatenated, must retrieve the global view's ``T``
  steps and back; cross entropy over positions, both directions (:func:`local_global_loss`).
* **motion contrast** (``lmid``, ``llow``): instance contrast at the mid / low level where the
  time-reversed copy of the same video is an extra negative (:func:`multi_positive_infonce`
  with ``extra_negatives``).
* **swapped prediction** (``lsd``): SwAV codes from Sinkhorn-Knopp (epsilon 0.05, 3
  iterations) over a queue of prototype logits (1024 entries), predicted from the other view
  with ``p = softmax(logit / 0.1)`` (:func:`sinkhorn`, :func:`swapped_prediction_loss`).
* **graph constraint** (``lgraph``): an instance graph (the view-to-view softmax similarity,
  entries below 0.05 cut) times a semantic graph (same SwAV cluster), row-normalised, is the
  soft target of a view-to-view softmax at high x1, mid x0.5, low x0.3 (:func:`graph_targets`,
  :func:`graph_loss`).

Total, as released: ``lhigh + lfine + lgraph + 0.5 (lmid + lfmid) + 0.3 (llow + lflow) + 0.5 lsd``.

Distributed training gathers the projections of every rank (:func:`gather`, differentiable):
each rank's queries meet the whole batch's negatives, and the mean of the per-rank losses is
the loss of one process holding the gathered batch.

Differences from the released code, on purpose:

* The motion contrast's reversed copy is the backbone's features of the *time-reversed input
  clip*. The release flips the layer2/layer3 *feature maps* in time and relies on its
  motion-excitation block (temporal differences) to tell the two apart; without such a block a
  flipped map pools to the very same vector as the original, which would make the extra
  negative identical to the positive. Reversing the input works for any backbone and for
  cached features (the extraction job's ``reverse`` option).
* The graph loss keeps the release's reduction (mean over all ``b x B`` entries, i.e. the
  soft-target cross entropy divided by the gathered batch size ``B``) unless
  ``graph_reduction="ce"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

LEVELS: tuple[str, ...] = ("low", "mid", "high")
DEFAULT_CHANNELS: dict[str, int] = {"low": 128, "mid": 256, "high": 512}
EPS = 1e-10


# ---------------------------------------------------------------------------------------- gather
def gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` concatenated on dim 0 (gradients flow back to every rank), and the
    offset of this rank's rows in it. Identity when not distributed.

    Every rank must pass the same shape (the recipe drops the last partial batch).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherRows.apply(x), dist.get_rank() * x.shape[0]


class _GatherRows(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered tensor (all_reduce)
    and keeps this rank's rows: the exact gradient of the sum of the per-rank losses. (A plain
    all_reduce is used because the all-to-all emulation of reduce-scatter for gloo in
    ``torch.distributed.nn.functional.all_gather`` gave wrong gradients here, see
    tests/test_ssl_losses.py.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (rank * x.shape[0], (rank + 1) * x.shape[0])
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows[0]:ctx.rows[1]]


# ---------------------------------------------------------------------------------------- losses
def multi_positive_infonce(
    q: torch.Tensor,
    keys: torch.Tensor,
    offset: int = 0,
    *,
    temperature: float = 0.07,
    extra_negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance contrast with several positives per video (the release's ``feat_contrast`` /
    ``motion_contrast``).

    For view ``a`` of local video ``i``: positives are the other views ``a' != a`` of the same
    video, negatives every view of every other video in ``keys`` plus, when given, the
    video's ``extra_negatives`` (its time-reversed copies). Per query
    ``loss = -log(sum_pos e^{s/T} / (sum_pos e^{s/T} + sum_neg e^{s/T}))``.

    Args:
        q: ``(b, n, d)`` this rank's projections (``n >= 2`` views).
        keys: ``(B, n, d)`` the gathered batch; ``keys[offset + i]`` is ``q[i]``.
        offset: this rank's first row in ``keys``.
        temperature: softmax temperature (0.07).
        extra_negatives: ``(b, m, d)`` more negatives of each local video.

    Returns:
        ``(loss, acc)``: mean loss over the ``b * n`` queries, and the fraction of queries whose
        positive mass exceeds the negative mass.
    """
    b, n, d = q.shape
    if n < 2:
        raise ValueError(f"multi_positive_infonce needs >= 2 views per video, got {n}")
    big = keys.shape[0]
    q = F.normalize(q, dim=-1)
    keys = F.normalize(keys, dim=-1)
    pos = torch.einsum("bnd,bmd->bnm", q, q) / temperature  # (b, n, n)
    self_mask = torch.eye(n, dtype=torch.bool, device=q.device)
    pos = pos.masked_fill(self_mask, float("-inf"))
    neg = torch.einsum("bnd,kmd->bnkm", q, keys) / temperature  # (b, n, B, n)
    own = torch.zeros(b, big, dtype=torch.bool, device=q.device)
    own[torch.arange(b), offset + torch.arange(b)] = True
    neg = neg.masked_fill(own[:, None, :, None], float("-inf")).reshape(b, n, big * n)
    if extra_negatives is not None:
        extra = torch.einsum("bnd,bmd->bnm", q, F.normalize(extra_negatives, dim=-1)) / temperature
        neg = torch.cat([neg, extra], dim=-1)  # (b, n, B*n + m)
    lpos = torch.logsumexp(pos, dim=-1)  # (b, n)
    lneg = torch.logsumexp(neg, dim=-1)
    loss = torch.logaddexp(lpos, lneg) - lpos
    return loss.mean(), (lpos > lneg).float().mean()


def local_global_loss(fine: torch.Tensor, temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor]:
    """Local-global timestamp matching (the release's ``local_global``).

    The two local views (frames 0:16 and 16:32), each average-pooled in time to ``T/2`` steps
    and concatenated, give ``T`` steps that line up with the global view's ``T`` steps (every
    2nd frame of 0:32). Each local step must retrieve the global step at the same position
    among all ``T`` (cross entropy over positions, cosine / temperature) and vice versa.

    Args:
        fine: ``(b, 3, d, T)`` projections with time kept: views local-0, local-1, global.
        temperature: 0.07.

    Returns:
        ``(loss, acc)``: the mean of both directions' cross entropy, and the fraction of steps
        matched to the right position.
    """
    b, n, d, t = fine.shape
    if n < 3 or t % 2:
        raise ValueError(f"local_global_loss needs 3 views and an even number of time steps, got {tuple(fine.shape)}")
    former = F.adaptive_avg_pool1d(fine[:, 0], t // 2)  # (b, d, T) -> (b, d, T/2)
    latter = F.adaptive_avg_pool1d(fine[:, 1], t // 2)
    local = F.normalize(torch.cat([former, latter], dim=-1), dim=1)  # (b, d, T)
    overview = F.normalize(fine[:, -1], dim=1)
    l2g = torch.einsum("bcm,bcn->bmn", local, overview).reshape(b * t, t) / temperature
    g2l = torch.einsum("bcm,bcn->bmn", overview, local).reshape(b * t, t) / temperature
    labels = torch.arange(t, device=fine.device).repeat(b)
    loss = (F.cross_entropy(l2g, labels) + F.cross_entropy(g2l, labels)) / 2
    acc = ((l2g.argmax(1) == labels).float().mean() + (g2l.argmax(1) == labels).float().mean()) / 2
    return loss, acc


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp codes of SwAV: an equipartition of ``N`` samples over ``K`` prototypes.

    ``Q = exp(scores / eps)`` (``K x N``, total mass 1) is scaled ``iters`` times so that its
    rows (prototypes) sum to ``1/K`` and its columns (samples) to ``1/N``; the last step
    fixes the columns exactly, the rows converge with more iterations.

    Args:
        scores: ``(N, K)`` prototype logits.
        eps: entropic regularisation (0.05).
        iters: scaling iterations (3).

    Returns:
        ``(N, K)`` codes, each row a distribution over the prototypes (``N x`` the column-
        normalised plan).
    """
    s = scores.double() / eps
    q = torch.exp(s - s.max()).T  # (K, N)
    q = q / q.sum()
    k, n = q.shape
    for _ in range(iters):
        q = q * ((1.0 / k) / q.sum(dim=1, keepdim=True).clamp_min(1e-300))
        q = q * ((1.0 / n) / q.sum(dim=0, keepdim=True).clamp_min(1e-300))
    return (q / q.sum(dim=0, keepdim=True)).T.to(scores.dtype)


def swapped_prediction_loss(logits: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SwAV swapped prediction: view 0's prediction against view 1's code and back.

    Args:
        logits: ``(b, 2, K)`` prototype logits of the two local views.
        codes: ``(b, 2, K)`` their Sinkhorn codes (no gradient).
        temperature: 0.1.

    Returns:
        ``-0.5 * (sum q_1 log p_0 + sum q_0 log p_1)``, mean over the batch.
    """
    p = F.softmax(logits / temperature, dim=-1)
    codes = codes.detach()
    per = torch.sum(codes[:, 1] * torch.log(p[:, 0] + EPS), -1) + torch.sum(codes[:, 0] * torch.log(p[:, 1] + EPS), -1)
    return (-0.5 * per).mean()


@torch.no_grad()
def instance_graph(sim: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """The release's instance graph: the ``(B, B)`` view-0-to-view-1 softmax similarity with
    entries below ``threshold`` set to 0; the diagonal is always kept."""
    g = sim.clone()
    diag = g.diagonal().clone()
    g[g < threshold] = 0
    g.diagonal().copy_(diag)
    return g


@torch.no_grad()
def graph_targets(sim: torch.Tensor, labels: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """Soft targets of the graph constraint: instance graph x semantic graph, row-normalised.

    Args:
        sim: ``(B, B)`` softmax similarity of view 0 against view 1 (gathered batch).
        labels: ``(B,)`` SwAV cluster of each video (argmax of the summed codes).
        threshold: instance-graph cut (0.05).

    Returns:
        ``(B, B)`` row-stochastic targets (the diagonal is always in).
    """
    sem = (labels[:, None] == labels[None, :]).to(sim.dtype)
    com = instance_graph(sim, threshold) * sem
    return com / com.sum(dim=1, keepdim=True).clamp_min(EPS)


def graph_loss(q: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, temperature: float = 0.07,
               reduction: str = "released") -> torch.Tensor:
    """Graph constraint: the view-0-to-view-1 softmax of each local video against the soft targets.

    Args:
        q: ``(b, 2, d)`` this rank's graph projections (two local views).
        keys: ``(B, 2, d)`` the gathered ones.
        targets: ``(b, B)`` this rank's rows of :func:`graph_targets`.
        temperature: 0.07.
        reduction: ``"released"`` (mean over all ``b x B`` entries, as the release) or ``"ce"``
            (sum over targets, mean over rows: the soft-target cross entropy).
    """
    qn = F.normalize(q[:, 0], dim=-1)
    kn = F.normalize(keys[:, 1], dim=-1)
    sim = F.softmax(qn @ kn.T / temperature, dim=1)  # (b, B)
    per = -torch.log(sim + EPS) * targets
    if reduction == "released":
        return per.mean()
    if reduction == "ce":
        return per.sum(1).mean()
    raise ValueError(f"graph reduction {reduction!r}: choose released or ce")


# ---------------------------------------------------------------------------------------- modules
class LevelProjection(nn.Module):
    """``1x1 Conv1d C -> C, ReLU, 1x1 Conv1d C -> dim`` over ``(N, C, T)`` (time kept)."""

    def __init__(self, channels: int, dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(channels, channels, 1), nn.ReLU(), nn.Conv1d(channels, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, C, T) -> (N, dim, T)


class SSLOutput(NamedTuple):
    """Projections of a batch of videos with ``V`` views each (per level name).

    Attributes:
        inst: ``{level: (B, V, d)}`` time-pooled projections (instance / motion contrast).
        fine: ``{level: (B, V, d, T)}`` projections with time kept (local-global matching).
        graph: ``{level: (B, V, d)}`` time-pooled graph projections.
        logits: ``(B, V, K)`` prototype logits of the L2-normalised global projection.
    """

    inst: dict[str, torch.Tensor]
    fine: dict[str, torch.Tensor]
    graph: dict[str, torch.Tensor]
    logits: torch.Tensor


@dataclass(frozen=True)
class MLOWeights:
    """Loss weights and switches of the multi-level objective (released defaults).

    Attributes:
        high, fine: instance contrast and local-global matching at the high level (1, 1).
        mid, low: the mid / low level's motion contrast plus local-global matching (0.5, 0.3).
        swav: swapped prediction (0.5).
        graph: the graph constraint (1) with per-level factors ``graph_high/mid/low`` (1, 0.5, 0.3).
        temperature: contrastive temperature (0.07).
        swav_temperature: temperature of ``p = softmax(logit / T)`` (0.1).
        sinkhorn_eps, sinkhorn_iters: 0.05 and 3.
        graph_threshold: instance-graph cut (0.05).
        graph_reduction: ``released`` or ``ce`` (see :func:`graph_loss`).
        motion_reversed: use time-reversed copies as extra negatives of the motion contrast.
    """

    high: float = 1.0
    fine: float = 1.0
    mid: float = 0.5
    low: float = 0.3
    swav: float = 0.5
    graph: float = 1.0
    graph_high: float = 1.0
    graph_mid: float = 0.5
    graph_low: float = 0.3
    temperature: float = 0.07
    swav_temperature: float = 0.1
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 3
    graph_threshold: float = 0.05
    graph_reduction: str = "released"
    motion_reversed: bool = True

    def __post_init__(self) -> None:
        if self.graph_reduction not in ("released", "ce"):
            raise ValueError(f"graph_reduction {self.graph_reduction!r}: choose released or ce")
        if self.temperature <= 0 or self.swav_temperature <= 0 or self.sinkhorn_eps <= 0:
            raise ValueError("temperatures and sinkhorn_eps must be > 0")


class PrototypeQueue(nn.Module):
    """FIFO of the last ``size`` gathered prototype logits ``(size, 2, K)`` for the codes.

    Updated only by :meth:`update` (never inside a forward pass). The loss appends the gathered
    batch first, so the batch's codes are the last rows of :meth:`history`, as released.
    """

    def __init__(self, size: int = 1024, num_prototypes: int = 1000) -> None:
        super().__init__()
        self.size = int(size)
        self.register_buffer("logits", torch.zeros(self.size, 2, num_prototypes))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        """Append ``(B, 2, K)`` logits (the oldest fall out)."""
        b = min(logits.shape[0], self.size)
        self.logits.copy_(torch.cat([self.logits[b:], logits[-b:].detach().to(self.logits.dtype)], 0))
        self.filled.fill_(min(self.size, int(self.filled) + b))

    def history(self) -> torch.Tensor:
        """The filled part, oldest first: ``(filled, 2, K)``."""
        return self.logits[self.size - int(self.filled):]


class MultiLevelSSLHead(nn.Module):
    """Projections of the multi-level objective over per-level ``(C, T)`` features.

    Per level: ``inst`` (instance / motion contrast), ``fine`` (local-global) and ``graph``
    projections (:class:`LevelProjection`); ``project_global`` (Linear C_high -> C_high, BN,
    ReLU, Linear -> dim, L2-normalised) and ``prototypes`` (Linear dim -> K, no bias; renormalise
    with :meth:`normalize_prototypes` before each step, as released).

    Args:
        channels: ``{level: C}`` (R3D-18: low 128, mid 256, high 512).
        dim: projection width (128).
        num_prototypes: SwAV prototypes ``K`` (1000 as released).
    """

    def __init__(self, channels: Mapping[str, int] | None = None, *, dim: int = 128, num_prototypes: int = 1000) -> None:
        super().__init__()
        self.channels = dict(channels or DEFAULT_CHANNELS)
        if set(self.channels) != set(LEVELS):
            raise ValueError(f"channels must name the levels {LEVELS}, got {sorted(self.channels)}")
        self.dim, self.num_prototypes = dim, num_prototypes
        self.inst = nn.ModuleDict({lv: LevelProjection(c, dim) for lv, c in self.channels.items()})
        self.fine = nn.ModuleDict({lv: LevelProjection(c, dim) for lv, c in self.channels.items()})
        self.graph = nn.ModuleDict({lv: LevelProjection(c, dim) for lv, c in self.channels.items()})
        ch = self.channels["high"]
        self.project_global = nn.Sequential(nn.Linear(ch, ch), nn.BatchNorm1d(ch), nn.ReLU(), nn.Linear(ch, dim))
        self.prototypes = nn.Linear(dim, num_prototypes, bias=False)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise every prototype (the release does it before each step)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, feats: Mapping[str, torch.Tensor]) -> SSLOutput:
        """``{level: (B, V, C, T)}`` -> :class:`SSLOutput` (V views per video)."""
        inst, fine, graph = {}, {}, {}
        for lv in LEVELS:
            x = feats[lv]
            b, v, c, t = x.shape
            flat = x.reshape(b * v, c, t)
            fine[lv] = self.fine[lv](flat).reshape(b, v, self.dim, t)
            inst[lv] = self.inst[lv](flat).mean(-1).reshape(b, v, self.dim)  # project, then pool time
            graph[lv] = self.graph[lv](flat).mean(-1).reshape(b, v, self.dim)
        hb, hv = feats["high"].shape[:2]
        g = F.normalize(self.project_global(feats["high"].mean(-1).reshape(hb * hv, -1)), dim=1)  # (B*V, d)
        return SSLOutput(inst, fine, graph, self.prototypes(g).reshape(hb, hv, -1))

    def embed_reversed(self, feats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Instance projections of time-reversed copies: ``{level: (B, V', C, T)}`` -> ``{level: (B, V', d)}``
        (only the levels given, typically low and mid)."""
        out = {}
        for lv, x in feats.items():
            b, v, c, t = x.shape
            out[lv] = self.inst[lv](x.reshape(b * v, c, t)).mean(-1).reshape(b, v, self.dim)
        return out

    def loss(
        self,
        out: SSLOutput,
        reversed_inst: Mapping[str, torch.Tensor] | None = None,
        *,
        weights: MLOWeights = MLOWeights(),
        queue: PrototypeQueue | None = None,
        use_queue: bool = False,
        use_graph: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Every loss term and the weighted total (``"loss"``).

        Args:
            out: this rank's :class:`SSLOutput` (views: local-0, local-1, global).
            reversed_inst: ``{"low"/"mid": (b, 2, d)}`` projections of the local views' time-reversed
                copies (:meth:`embed_reversed`); None leaves the extra negative out.
            weights: loss weights and temperatures.
            queue: prototype-logit queue; updated here with the gathered logits (an explicit
                step of the loss, not of any forward pass).
            use_queue: compute the codes over the queue's history plus the batch (the release
                switches this on from epoch 10).
            use_graph: add the graph constraint (the release switches it on from epoch 20).

        Returns:
            ``loss`` plus ``lhigh``, ``lfine``, ``lmid``, ``lfmid``, ``llow``, ``lflow``, ``lsd``,
            ``lgraph`` and accuracies ``acc_*``, ``clusters`` (distinct SwAV clusters in the batch).
        """
        w = weights
        res: dict[str, torch.Tensor] = {}
        local = {lv: out.inst[lv][:, :2] for lv in LEVELS}  # the two local views
        full = {lv: gather(local[lv]) for lv in LEVELS}
        offset = full["high"][1]
        res["lhigh"], res["acc_high"] = multi_positive_infonce(local["high"], full["high"][0], offset,
                                                               temperature=w.temperature)
        for lv, key in (("mid", "lmid"), ("low", "llow")):
            extra = reversed_inst.get(lv) if (reversed_inst is not None and w.motion_reversed) else None
            res[key], res[f"acc_{lv}"] = multi_positive_infonce(local[lv], full[lv][0], offset,
                                                                temperature=w.temperature, extra_negatives=extra)
        for lv, key in (("high", "lfine"), ("mid", "lfmid"), ("low", "lflow")):
            res[key], res[f"acc_f{lv}"] = local_global_loss(out.fine[lv], w.temperature)
        # SwAV codes over (queue history +) the gathered batch; this rank's rows are at the end.
        logits = out.logits[:, :2]
        logits_full, _ = gather(logits.detach())
        scores = logits_full
        if queue is not None:
            queue.update(logits_full)  # the batch enters at the end, as released
            if use_queue:
                scores = queue.history()
        big = logits_full.shape[0]
        q0 = sinkhorn(scores[:, 0], w.sinkhorn_eps, w.sinkhorn_iters)[-big:]
        q1 = sinkhorn(scores[:, 1], w.sinkhorn_eps, w.sinkhorn_iters)[-big:]
        codes_full = torch.stack([q0, q1], 1)  # (B, 2, K)
        b = logits.shape[0]
        res["lsd"] = swapped_prediction_loss(logits, codes_full[offset:offset + b], w.swav_temperature)
        clusters = (q0 + q1).argmax(-1)
        res["clusters"] = torch.tensor(float(torch.unique(clusters).numel()))
        total = (w.high * res["lhigh"] + w.fine * res["lfine"] + w.mid * (res["lmid"] + res["lfmid"])
                 + w.low * (res["llow"] + res["lflow"]) + w.swav * res["lsd"])
        if use_graph:
            with torch.no_grad():
                hk = F.normalize(full["high"][0].detach(), dim=-1)
                sim = F.softmax(hk[:, 0] @ hk[:, 1].T / w.temperature, dim=1)  # (B, B) instance similarity
                targets = graph_targets(sim, clusters, w.graph_threshold)[offset:offset + b]
            lg = 0.0
            for lv, f in (("high", w.graph_high), ("mid", w.graph_mid), ("low", w.graph_low)):
                g = out.graph[lv][:, :2]
                lg = lg + f * graph_loss(g, gather(g)[0], targets, w.temperature, w.graph_reduction)
            res["lgraph"] = lg
            total = total + w.graph * lg
        else:
            res["lgraph"] = total.new_zeros(())
        res["loss"] = total
        return res


# ---------------------------------------------------------------------------------------- temporal cue
class CueOutput(NamedTuple):
    """Forward/reversed logits and the features they came from."""

    logits: torch.Tensor  # (B, 2)
    embed: torch.Tensor  # (B, D)


class TemporalCueHead(nn.Module):
    """The release's temporal-cue probe: a bias-free ``Linear(D, 2)`` on frozen pooled features
    that tells a clip (class 0) from its time-reversed copy (class 1).

    Bias-free so that :meth:`cam` (the same weights at every ``(t, h, w)`` position of the
    unpooled map) averages exactly to the clip's logits: a class activation map of where the
    arrow-of-time evidence lies.

    Args:
        in_features: feature dimension (512 for R3D-18 ``layer4``).
        num_classes: 2 (forward, reversed); other values are accepted for the registry sweep.
    """

    feats_ndim = 2

    def __init__(self, in_features: int = 512, num_classes: int = 2) -> None:
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.fc = nn.Linear(in_features, num_classes, bias=False)

    def forward(self, feats: torch.Tensor) -> CueOutput:
        """``(B, D)`` pooled features -> ``CueOutput(logits (B, 2), embed (B, D))``."""
        return CueOutput(self.fc(feats), feats)

    def cam(self, maps: torch.Tensor) -> torch.Tensor:
        """Class activation maps: ``(B, D, T, H, W)`` -> ``(B, 2, T, H, W)`` (their mean over
        ``(t, h, w)`` equals the logits of the pooled map)."""
        return torch.einsum("kd,bdthw->bkthw", self.fc.weight, maps)

    def loss(self, out: CueOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"ce"}`` against ``targets (B,)`` (0 forward, 1 reversed, -1 ignored)."""
        labels = targets.long()
        if bool((labels >= 0).any()):
            return {"ce": F.cross_entropy(out.logits, labels, ignore_index=-1)}
        return {"ce": out.logits.sum() * 0.0}
