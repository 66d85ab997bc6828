"""Losses stay finite without positive pairs; LCA weighting; every ablation switch runs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
torch.set_num_threads(1)

from cxrctx.train.config import make_config  # noqa: E402
from cxrctx.train.loop import build_model  # noqa: E402
from cxrctx.train.losses import itcl_loss, llcl_loss  # noqa: E402
from cxrctx.train.model import ce_loss  # noqa: E402
from cxrctx.train.tokenizer import WordTokenizer  # noqa: E402

pytestmark = pytest.mark.train


def _emb(B, R=11, d=16, grad=True):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, R, d, generator=g).requires_grad_(grad)


@pytest.mark.parametrize(
    "B,keys,normals",
    [
        (1, [[0] * 11], True),  # one image: no "other image" at all
        (3, [[1 << i for i in range(11)], [1 << 11, 1 << 12] + [0] * 9, [1 << 13] * 11], False),
        (2, [[0] * 11, [5] * 11], False),  # normals not paired, lesions disjoint
    ],
)
def test_llcl_without_positives_is_zero_and_finite(B, keys, normals):
    a, c = _emb(B), _emb(B)
    loss, n = llcl_loss(a, c, torch.tensor(keys), tau=0.07, pair_normals=normals)
    assert n == 0 and float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(c.grad).all()


def test_llcl_pairs_same_roi_of_other_images_only():
    a = _emb(2)
    c = a.detach().clone()
    keys = torch.tensor([[3] + [0] * 10, [1] + [0] * 10])  # ROI 0 shares lesion bit 0
    loss, n = llcl_loss(a, c, keys, tau=0.1, pair_normals=False)
    assert n == 2 and torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    assert torch.isfinite(a.grad).all()
    _, n_norm = llcl_loss(a, c, keys, tau=0.1, pair_normals=True)
    assert n_norm == 22  # every ROI has its counterpart in the other image


def test_itcl_edge_cases():
    a, t = _emb(2), _emb(2)
    none = torch.zeros(2, 11, dtype=torch.bool)
    ids = torch.arange(22).view(2, 11)
    loss, n = itcl_loss(a, t, none, ids, tau=0.07)
    assert n == 0 and float(loss.detach()) == 0.0
    loss.backward()
    one = none.clone()
    one[0, 0] = True
    assert itcl_loss(a, t, one, ids, tau=0.07)[1] == 0
    same = torch.zeros_like(ids)  # all the same text: every pair positive → loss 0 exactly
    loss, n = itcl_loss(a, t, ~none, same, tau=0.07)
    assert n == 22 and float(loss.detach()) == pytest.approx(0.0, abs=1e-5)
    loss, _ = itcl_loss(a, t, ~none, ids, tau=0.07)
    assert torch.isfinite(loss) and float(loss.detach()) > 0


def _tok():
    return WordTokenizer.build(
        ["there is a left pleural effusion .", "the heart is enlarged ."], extra=["cardiomegaly"]
    )


def _batch(B, size, cfg, tok):
    g = torch.Generator().manual_seed(1)
    tokens = torch.tensor(
        [[tok.encode("there is a left pleural effusion .", cfg.max_tokens)] * 11] * B
    )
    return {
        "rois": torch.rand(B, 11, size, size, generator=g),
        "glob": torch.rand(B, cfg.global_image_size, cfg.global_image_size, generator=g),
        "tokens": tokens,
        "targets": torch.zeros(B, 14),
        "roi_keys": torch.zeros(B, 11, dtype=torch.long),
        "has_text": torch.ones(B, 11, dtype=torch.bool),
        "text_ids": torch.zeros(B, 11, dtype=torch.long),
    }


def test_lca_weights_and_switch():
    tok = _tok()
    cfg = make_config("tiny")
    m = build_model(cfg, tok).eval()
    w = m.lca_weights(torch.tensor([[1.0, 0.0]]))
    assert w.squeeze(-1)[0].tolist() == pytest.approx([0.9, 0.1])
    raw = torch.randn(2, 11, cfg.embed_dim)
    pos, neg = m.refine(raw, torch.ones(2, 14)), m.refine(raw, torch.zeros(2, 14))
    assert not torch.allclose(pos, neg)  # lesion status reaches the ROI embeddings
    m2 = build_model(make_config("tiny", use_lca=False), tok).eval()
    assert torch.equal(m2.refine(raw, torch.ones(2, 14)), raw)


@pytest.mark.parametrize("switch", ["use_lca", "use_llcl", "use_itcl", "use_classifier"])
def test_every_module_can_be_switched_off(switch):
    tok = _tok()
    cfg = make_config("tiny", **{switch: False})
    m = build_model(cfg, tok)
    b = _batch(2, cfg.image_size_stage1, cfg, tok)
    out = m(b)
    assert ("cls_logits" in out) == cfg.use_classifier and ("text_emb" in out) == cfg.use_itcl
    loss = ce_loss(out["dec_logits"], b["tokens"])
    loss.backward()
    assert torch.isfinite(loss)
    gen = m.eval().generate(b["rois"], b["glob"], bos=tok.bos_id, eos=tok.eos_id, max_len=6)
    assert gen["tokens"].shape[:2] == (2, 11) and gen["probs"].shape == (2, 14)
    # stage-2 resolution works through the same ViT (dynamic image size)
    assert m.encode_rois(torch.rand(1, 11, cfg.image_size_stage2, cfg.image_size_stage2)).shape == (
        1,
        11,
        cfg.embed_dim,
    )


def test_tokenizer_roundtrip(tmp_path):
    tok = _tok()
    ids = tok.encode("There is a left pleural effusion.", 16)
    assert ids[0] == tok.bos_id and tok.eos_id in ids and len(ids) == 16
    assert tok.decode(ids) == "There is a left pleural effusion."
    assert tok.decode(tok.encode("zebra", 8)) == "[UNK]"
    tok.save(tmp_path / "t.json")
    assert WordTokenizer.load(tmp_path / "t.json").vocab == tok.vocab


def test_local_vit_weights_are_loaded_and_bad_files_refused(tmp_path):
    from cxrctx.errors import CxrctxError

    tok = _tok()
    cfg = make_config("tiny")
    donor = build_model(cfg, tok)
    sd = {k: v for k, v in donor.vit.state_dict().items()}
    torch.save(sd, tmp_path / "vit.pt")
    m = build_model(make_config("tiny", vit_weights=str(tmp_path / "vit.pt"), seed=1), tok)
    assert all(torch.equal(m.vit.state_dict()[k], v) for k, v in sd.items())
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CxrctxError, match="cannot load weights"):
        build_model(make_config("tiny", vit_weights=str(tmp_path / "bad.pt")), tok)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CxrctxError, match="do not fit"):
        build_model(make_config("tiny", vit_weights=str(tmp_path / "other.pt")), tok)
    with pytest.raises(CxrctxError, match="not found"):
        build_model(make_config("tiny", vit_weights=str(tmp_path / "none.pt")), tok)
