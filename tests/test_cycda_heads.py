"""The TLlib-style options of the CycDA image model: BatchNorm bottleneck and discriminator, the
DANN lr annealing, and one forward over both domains when the embedding has batch statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from featbank.experiments.config import ConfigError
from featbank.experiments.fit import OptimConfig, lr_factor
from featbank.experiments.recipes.cycda import load_cycda_config, load_data
from featbank.experiments.data.synth_features import write_synthetic_cycda_sets
from featbank.heads.adaptation import DomainAdversarialLoss, DomainDiscriminator
from featbank.heads.cycda import CycdaImageHead
from featbank.store import MemoryStore


def test_bn_bottleneck_embeds_through_batchnorm_and_relu():
    torch.manual_seed(0)
    head = CycdaImageHead(16, 4, bottleneck="bn")
    assert head.batch_dependent and not CycdaImageHead(16, 4).batch_dependent
    assert [type(m) for m in head.project] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    x = torch.randn(32, 16) * 50  # large inputs: the embedding stays normalised
    z = head.embed(x)
    assert z.min() >= 0 and z.shape == (32, 128)
    assert z.pow(2).sum(1).sqrt().mean() < 3 * math.sqrt(128)  # unit-variance pre-activations
    head.eval()
    out = head(x)
    torch.testing.assert_close(out.logits, head.classify(head.embed(x)))
    with pytest.raises(ValueError, match="bottleneck"):
        CycdaImageHead(16, 4, bottleneck="layernorm")


def test_tllib_discriminator_has_batchnorm_and_still_reverses_the_gradient():
    plain = DomainDiscriminator(16, 8)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules()) and len(plain.net) == 3
    disc = DomainDiscriminator(16, 8, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in disc.modules()) == 2
    loss = DomainAdversarialLoss(disc)
    f_s = torch.randn(6, 16, requires_grad=True)
    f_t = torch.randn(6, 16) + 1

    def grad(coeff):
        f_s.grad = None
        loss(f_s, f_t, coeff).loss.backward()
        return f_s.grad.clone()

    g1, g_half = grad(-1.0), grad(0.5)  # coeff -1: the plain gradient
    assert g1.abs().sum() > 0
    torch.testing.assert_close(g_half, -0.5 * g1)


def test_inv_schedule_is_the_dann_annealing():
    cfg = OptimConfig(schedule="inv", epochs=20)
    f = [lr_factor(cfg, e) for e in range(20)]
    assert f[0] == 1.0 and f[10] == pytest.approx((1 + 10 * 0.5) ** -0.75)
    assert all(a > b for a, b in zip(f, f[1:]))
    assert lr_factor(OptimConfig(), 7) == 1.0


def _store_cfg(extra):
    store = MemoryStore()
    names = write_synthetic_cycda_sets(store, num_classes=3, source_per_class=8, train_per_class=4, test_per_class=3,
                                       frames_per_video=5, clips_per_video=3, dim=16)
    cfg = load_cycda_config(None, [f"features.{k}={v}" for k, v in names.items()] + ["threads=1", "plot=false"] + extra)
    return store, cfg


def test_config_passes_the_options_through_and_names_bad_values():
    _, cfg = _store_cfg(["stage1.bottleneck=bn", "stage1.disc_batch_norm=true", "stage1.schedule=inv",
                         "stage1.grad_clip=5"])
    o = cfg.stage1.optim()
    assert (cfg.stage1.bottleneck, cfg.stage1.disc_batch_norm, o.schedule, o.grad_clip) == ("bn", True, "inv", 5.0)
    with pytest.raises(ConfigError, match="stage1.*bottleneck"):
        _store_cfg(["stage1.bottleneck=layernorm"])
    with pytest.raises(ConfigError, match="stage3.*schedule"):
        _store_cfg(["stage3.schedule=cosine"])


@pytest.mark.parametrize("bottleneck", ["linear", "bn"])
def test_stage1_forwards_both_domains_together_only_with_batch_statistics(bottleneck):
    """With BatchNorm the embedding of a batch depends on the batch, so source and target go
    through one forward (statistics of the mixed batch, as TLlib's DANN); the linear embedding
    keeps the separate forwards (its numbers are unchanged by this option)."""
    import featbank.experiments.recipes.cycda_stages as st

    store, cfg = _store_cfg(["stage1.epochs=2", "stage1.batch_size=8", f"stage1.bottleneck={bottleneck}",
                             "stage1.disc_batch_norm=true", "stage1.schedule=inv", "stage1.grad_clip=5"])
    data = load_data(cfg, store)
    head = st.new_image_head(data.source.dim, data.num_classes, cfg.stage1, 0)
    sizes = []
    head.project.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])) if m.training else None)
    losses = st.train_image_model(head, data, cfg.stage1, 0, adversarial=True)
    assert np.isfinite(losses["loss"]) and 0 <= losses["disc_acc"] <= 1
    assert set(sizes) == ({16} if bottleneck == "bn" else {8})
