"""The feature contract every backbone implements (timm style: the job talks only to it).

``forward_features(x, endpoint)`` returns a 5-D map ``(B, C', T', H', W')``;
``forward_head(feats, pre_logits, keep_time)`` pools it to ``(B, D)`` or ``(B, T', D)``,
or produces class logits when the map comes from the classifier endpoint.
"""

from __future__ import annotations

import abc
import copy

import torch
from torch import nn

from featbank.extract.errors import BackboneError
from featbank.store.schema import BackboneSpec


class VideoBackbone(nn.Module, metaclass=abc.ABCMeta):
    """Base class: endpoint bookkeeping, pooling and the logits path.

    Subclasses set ``endpoints`` (feature maps in network order, last = default),
    ``endpoint_dims`` (pooled dimension per endpoint), ``num_features``, ``num_classes``
    and ``spec``, and implement ``_features(x, endpoint)``, ``_head_pre_logits(feats)``
    (default endpoint, time kept) and ``_head_logits(feats)`` (default endpoint, time kept).
    """

    endpoints: tuple[str, ...] = ()
    # channels_last_3d weights and inputs run faster on CPU for this network (measured for
    # I3D); on CUDA every backbone runs channels_last.
    cpu_channels_last: bool = False
    extra_endpoints: tuple[str, ...] = ()  # accepted by forward_features, not feature maps proper
    endpoint_dims: dict[str, int]
    endpoint_channels: dict[str, int]
    num_features: int
    num_classes: int
    spec: BackboneSpec

    @property
    def default_endpoint(self) -> str:
        """Name of the default feature map (the last of ``endpoints``)."""
        return self.endpoints[-1]

    def check_endpoint(self, endpoint: str | None) -> str:
        """Resolve ``None`` to the default endpoint; raise BackboneError for unknown names."""
        if endpoint is None:
            return self.default_endpoint
        if endpoint not in self.endpoints and endpoint not in self.extra_endpoints:
            raise BackboneError.unknown_endpoint(self.spec.name, endpoint, self.endpoints + self.extra_endpoints)
        return endpoint

    def set_weights_id(self, weights_id: str) -> None:
        """Record the sha256 of the weights now loaded in ``spec``."""
        self.spec = self.spec.replace(weights_id=weights_id)

    def fused_for_inference(self, *, channels_last: bool = False, inplace: bool = False) -> "VideoBackbone":
        """The network ready for inference: eval mode, no gradients, 5-D weights optionally
        channels_last_3d. Backbones that can fold BatchNorm into their convolutions override
        this (I3D). The result computes the same function and keeps ``spec`` (and weights id).

        Args:
            channels_last: store 5-D weights channels_last_3d.
            inplace: convert this module instead of a deep copy (a caller that owns the model,
                like the extraction job, saves the copy's time and memory).
        """
        fused = self if inplace else copy.deepcopy(self)
        fused.eval()
        for p in fused.parameters():
            p.requires_grad_(False)
            if channels_last and p.ndim == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        return fused

    def forward_features(self, x: torch.Tensor, endpoint: str | None = None) -> torch.Tensor:
        """Run the network up to ``endpoint``.

        Args:
            x: normalised clip batch ``(B, C, T, H, W)``.
            endpoint: one of ``endpoints`` (default: the last one).

        Returns:
            The endpoint's feature map ``(B, C', T', H', W')``.
        """
        if x.ndim != 5:
            raise BackboneError(f"{self.spec.name}: expected a 5-D input (B, C, T, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.spec.in_channels:
            raise BackboneError(
                f"{self.spec.name}: expected {self.spec.in_channels} input channels, got {x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )
        return self._features(x, self.check_endpoint(endpoint))

    def _resolve_head_endpoint(self, feats: torch.Tensor, endpoint: str | None) -> str | None:
        if endpoint is not None:
            return self.check_endpoint(endpoint)
        # Infer the default endpoint from the channel count (unique per model by construction).
        if feats.shape[1] == self.endpoint_channels[self.default_endpoint]:
            return self.default_endpoint
        return None

    def forward_head(
        self,
        feats: torch.Tensor,
        pre_logits: bool = True,
        keep_time: bool = False,
        endpoint: str | None = None,
    ) -> torch.Tensor:
        """Pool a feature map, or classify it.

        Args:
            feats: a map from ``forward_features`` ``(B, C, T, H, W)``.
            pre_logits: True -> pooled features; False -> class logits (default endpoint only).
            keep_time: keep the time axis: ``(B, T', D)`` instead of ``(B, D)``.
            endpoint: which endpoint ``feats`` came from; None infers it from the channel count
                (the default endpoint's channel count is unique in every model).

        Returns:
            ``(B, D)`` or ``(B, T', D)``; logits ``(B, num_classes)`` or ``(B, T'', num_classes)``.
        """
        if feats.ndim != 5:
            raise BackboneError(f"{self.spec.name}: forward_head expects a 5-D map, got shape {tuple(feats.shape)}")
        which = self._resolve_head_endpoint(feats, endpoint)
        if not pre_logits:
            if which != self.default_endpoint:
                raise BackboneError(
                    f"{self.spec.name}: logits need the {self.default_endpoint!r} map "
                    f"({self.endpoint_channels[self.default_endpoint]} channels), got {feats.shape[1]} channels"
                )
            out = self._head_logits(feats)  # (B, T'', K)
        elif which == self.default_endpoint:
            out = self._head_pre_logits(feats)  # (B, T', D)
        else:
            out = feats.mean(dim=(3, 4)).transpose(1, 2)  # (B, C, T, H, W) -> (B, T, C)
        return out if keep_time else out.mean(dim=1)  # (B, T, D) -> (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)`` of a clip batch ``(B, C, T, H, W)``."""
        return self.forward_head(self.forward_features(x), pre_logits=False, endpoint=self.default_endpoint)

    @abc.abstractmethod
    def _features(self, x: torch.Tensor, endpoint: str) -> torch.Tensor:
        """Run up to ``endpoint`` (already validated)."""

    def _head_pre_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=(3, 4)).transpose(1, 2)  # (B, C, T, H, W) -> (B, T, C)

    @abc.abstractmethod
    def _head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits with time kept ``(B, T'', K)`` from the default endpoint's map."""
