"""Backbone registry, the quality branch and the (embedding, quality) inference contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqface.config import ModelConfig
from eqface.models import BACKBONES, build_model
from eqface.models.pretrained import load_backbone_weights

# Small inputs keep the big IResNets fast on a CPU; the head adapts to the feature-map size.
SIZES = {"mobilefacenet": (112, 96)}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_honours_the_contract(name: str) -> None:
    size = SIZES.get(name, (64, 64) if name.startswith("iresnet") else (112, 112))
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone=name, embedding_size=64, image_size=size, quality_hidden=16)).eval()
    with torch.no_grad():
        emb, q = net(torch.randn(3, 3, *size))
    assert emb.shape == (3, 64) and q.shape == (3, 1)
    assert emb.dtype == torch.float32 and q.dtype == torch.float32
    assert torch.isfinite(emb).all() and torch.isfinite(q).all()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert ((q >= 0) & (q <= 1)).all()
    assert net.backbone.forward_features(torch.randn(1, 3, *size)).shape[1:] == net.backbone.feature_shape


def test_default_embedding_size_is_512() -> None:
    net = build_model(ModelConfig(backbone="tiny"))
    assert net.backbone.embedding_size == 512


def test_unknown_backbone_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'.*iresnet100.*mobilefacenet.*tiny"):
        build_model(ModelConfig(backbone="resnet9000"))


def test_iresnet_parameter_counts_match_arcface() -> None:
    # insightface's published sizes (backbone only): r18 24.0M, r50 43.6M, r100 65.2M.
    counts = {
        n: sum(p.numel() for p in BACKBONES.create(n).parameters()) / 1e6
        for n in ("iresnet18", "iresnet50", "iresnet100")
    }
    assert counts["iresnet18"] == pytest.approx(24.03, abs=0.05)
    assert counts["iresnet50"] == pytest.approx(43.59, abs=0.05)
    assert counts["iresnet100"] == pytest.approx(65.16, abs=0.05)


def test_quality_branch_reads_the_feature_map() -> None:
    net = build_model(ModelConfig(backbone="tiny", embedding_size=32, image_size=(32, 32), quality_hidden=8))
    assert net.quality.fc1.in_features == net.backbone.feature_dim


def test_wrong_weights_file_names_the_differences(tmp_path) -> None:
    net = build_model(ModelConfig(backbone="mobilefacenet", embedding_size=128, image_size=(112, 96)))
    state = {k: v.numpy() for k, v in net.backbone.state_dict().items()}
    state.pop("conv1.conv.weight")
    state["linear1.conv.weight"] = np.zeros((64, 512, 1, 1), np.float32)
    np.savez(tmp_path / "bad.npz", **state)
    with pytest.raises(ValueError, match="missing: conv1.conv.weight.*shape mismatch: linear1.conv.weight"):
        load_backbone_weights(net.backbone, tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(net.backbone, tmp_path / "absent.npz")


@pytest.mark.slow
def test_pretrained_mobilefacenet_separates_orl_identities(shared_data) -> None:
    from eqface.data.packs import load_pack
    from eqface.eval.roc import auc
    from eqface.train.trainer import embed_source

    cfg = ModelConfig(backbone="mobilefacenet", embedding_size=128, image_size=(112, 96))
    net = build_model(cfg)
    load_backbone_weights(net.backbone, shared_data / "weights" / "mobilefacenet_casia_xiaoccer_068.npz")
    source = load_pack(shared_data / "orl_att_faces.npz")
    emb, _ = embed_source(net, source, cfg.image_size, torch.device("cpu"))
    iu = np.triu_indices(len(emb), 1)
    same = (source.labels[:, None] == source.labels[None, :])[iu]
    assert auc((emb @ emb.T)[iu], same) >= 0.95


def test_a_reduced_quality_branch_keeps_the_map_layout_with_fewer_parameters() -> None:
    cfg = ModelConfig(backbone="mobilefacenet", embedding_size=128, image_size=(112, 96))
    flat, reduced = build_model(cfg), build_model(ModelConfig(**{**cfg.__dict__, "quality_reduce": 32}))
    c, h, w = reduced.backbone.feature_shape
    assert flat.quality.fc1.in_features == c * h * w == 21504
    assert reduced.quality.fc1.in_features == 32 * h * w
    count = [sum(p.numel() for p in net.quality.parameters()) for net in (flat, reduced)]
    assert count[0] > 11_000_000 and count[1] < 800_000
    reduced.eval()
    with torch.no_grad():
        _, q = reduced(torch.randn(3, 3, 112, 96))
    assert q.shape == (3, 1) and ((q >= 0) & (q <= 1)).all()


def test_every_backbone_names_its_embedding_head() -> None:
    for name in BACKBONES.names():
        backbone = build_model(ModelConfig(backbone=name, image_size=SIZES.get(name, (64, 64)))).backbone
        head_params = {id(p) for m in backbone.head() for p in m.parameters()}
        x = torch.randn(2, *backbone.feature_shape, requires_grad=True)
        backbone.eval()
        backbone.forward_head(x).sum().backward()
        used = {id(p) for p in backbone.parameters() if p.grad is not None}
        assert used and used <= head_params, name  # forward_head uses only the named head modules
