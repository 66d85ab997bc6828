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


def test_the_decoder_reads_the_statuses_from_one_token():
    """The status token is one memory slot per ROI; it changes with the statuses alone (the
    lesion tokens off), and it is absent without LCA or when switched off."""
    tok = _tok()
    refined, gate = torch.randn(2, 11, 64), torch.ones(2, 11, dtype=torch.bool)
    on = build_model(make_config("tiny", decoder_lesion_memory=False), tok).eval()
    pos, neg = (on.memory(refined, s, gate) for s in (torch.ones(2, 14), torch.zeros(2, 14)))
    assert pos.shape == (22, 3, 64) and not torch.allclose(pos[:, 2], neg[:, 2])
    assert torch.equal(pos[:, :2], neg[:, :2])  # ROI and gate slots do not see the statuses
    for kw in ({"decoder_status_token": False}, {"use_lca": False}):
        off = build_model(make_config("tiny", decoder_lesion_memory=False, **kw), tok).eval()
        assert off.memory(refined, torch.ones(2, 14), gate).shape == (22, 2, 64)


@pytest.mark.parametrize(
    "switches",
    [
        {"use_lca": False},
        {"use_llcl": False},
        {"use_itcl": False},
        {"use_finding_head": False},
        {"use_classifier": False, "use_lca": False},
        {"decoder_lesion_memory": False, "lca_status": "calibrated"},
        {"decoder_status_token": False},
    ],
)
def test_every_module_can_be_switched_off(switches):
    tok = _tok()
    cfg = make_config("tiny", **switches)
    m = build_model(cfg, tok)
    b = _batch(2, cfg.image_size_stage1, cfg, tok)
    out = m(b)
    assert ("cls_logits" in out) == cfg.use_classifier and ("text_emb" in out) == cfg.use_itcl
    loss = ce_loss(out["dec_logits"], b["tokens"])
    loss.backward()
    assert torch.isfinite(loss)
    gen = m.eval().generate(b["rois"], b["glob"], bos=tok.bos_id, eos=tok.eos_id, max_len=6)
    assert gen["tokens"].shape[:2] == (2, 11) and gen["probs"].shape == (2, 14)
    assert gen["status"].shape == (2, 14)
    assert ("gate" in gen) == cfg.use_finding_head
    if "gate" in gen:  # an open gate never ends the text at once
        first = gen["tokens"][..., 1]
        assert not bool((first[gen["gate"]] == tok.eos_id).any())
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


def test_inconsistent_switches_raise_instead_of_falling_back():
    from cxrctx.errors import CxrctxError

    with pytest.raises(CxrctxError, match="use_lca=true needs use_classifier"):
        make_config("tiny", use_classifier=False)
    with pytest.raises(CxrctxError, match="text_model and text_weights"):
        make_config("tiny", text_model="/x", text_weights="/y")


def test_inert_losses_are_not_computed():
    from cxrctx.train.loop import active_losses

    full = make_config("tiny")
    # the classifier is trained in its own stage: no classifier loss in stages 1 and 2
    assert active_losses(full, 1) == ["ce", "finding", "llcl", "itcl"]
    assert active_losses(full, 2) == ["ce", "finding", "llcl", "itcl"]
    base = make_config("tiny", use_lca=False)
    assert active_losses(base, 2) == ["ce", "finding"]  # frozen embeddings only: inert
    assert "llcl" not in active_losses(make_config("tiny", weight_llcl=0.0), 1)


def test_per_sequence_ce_weighs_short_texts_like_long_ones():
    V = 6
    tokens = torch.tensor([[2, 4, 3, 0, 0, 0], [2, 5, 5, 5, 5, 3]])  # 2 and 5 targets
    logits = torch.zeros(2, 5, V)
    logits[1, :, 5] = 10.0  # the long text is predicted well except its end
    logits[1, 4, 3] = 20.0
    per_seq = ce_loss(logits, tokens, per_sequence=True)
    per_tok = ce_loss(logits, tokens, per_sequence=False)
    short = float(torch.log(torch.tensor(float(V))))  # uniform: log V per token
    assert float(per_seq) == pytest.approx(short / 2, rel=1e-3)  # (short + ~0) / 2
    assert float(per_tok) == pytest.approx(2 * short / 7, rel=1e-3)  # 2 of 7 tokens


def test_auc_is_scikit_learns_and_thresholds_maximise_f1():
    import numpy as np

    from cxrctx.train.evaluation import auc, best_threshold, micro_macro_f1

    s = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    assert auc(s, y) == pytest.approx(0.75)
    assert auc(s, np.zeros(4)) is None
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.32, 0.9])
    t = np.array([0, 0, 0, 1, 1, 1])
    thr = best_threshold(p, t, 0.5)
    assert 0.2 <= thr < 0.3  # 0.5 would miss two positives
    assert best_threshold(p, np.zeros(6), 0.5) == 0.5
    micro, macro = micro_macro_f1(p[:, None], t[:, None], np.array([thr]))
    assert micro == macro == 1.0


def _tiny_bert(tmp_path):
    """A 1-layer BERT + WordPiece vocabulary written to a local folder (no download)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    words = "there is a left right pleural effusion the heart enlarged cardiomegaly no".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *words, "##s", "##ed"]
    d = tmp_path / "bert"
    cfg = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(d)
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return d


def test_local_bert_checkpoint_and_wordpiece_vocabulary(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = _tiny_bert(tmp_path)
    from transformers import BertModel

    from cxrctx.train.bert import WordPieceTokenizer
    from cxrctx.train.tokenizer import load_tokenizer

    tok = WordPieceTokenizer.from_pretrained(d)
    ids = tok.encode("There is a left pleural effusion.", 16)
    assert ids[0] == tok.bos_id and tok.eos_id in ids and len(ids) == 16 and ids[-1] == 0
    assert tok.decode(ids) == "There is a left pleural effusion."
    assert tok.encode("zebra", 5) == [tok.bos_id, tok.unk_id, tok.eos_id, 0, 0]
    tok.save(tmp_path / "tok.json")
    assert load_tokenizer(tmp_path / "tok.json").vocab == tok.vocab
    cfg = make_config("tiny", text_model=str(d), max_tokens=16)
    m = build_model(cfg, tok)
    ref = BertModel.from_pretrained(str(d), local_files_only=True, add_pooling_layer=False)
    got = m.text.bert.state_dict()
    assert all(
        torch.equal(got[k], v) for k, v in ref.state_dict().items()
    )  # pretrained, not random
    b = _batch(2, cfg.image_size_stage1, cfg, tok)
    out = m(b)
    assert out["text_emb"].shape == (2, 11, cfg.embed_dim)
    assert torch.isfinite(ce_loss(out["dec_logits"], b["tokens"]))


def test_bad_bert_folder_is_a_one_line_error(tmp_path):
    from cxrctx.errors import CxrctxError
    from cxrctx.train.bert import WordPieceTokenizer

    with pytest.raises(CxrctxError, match=r"no config\.json"):
        WordPieceTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CxrctxError, match=r"vocab\.txt"):
        WordPieceTokenizer.from_pretrained(tmp_path)


def test_findings_first_puts_affirmative_sentences_first():
    from cxrctx.train.data import findings_first

    s = [
        "No pneumothorax.",
        "There is a small left pleural effusion.",
        "Lungs are clear.",
        "Mild cardiomegaly.",
    ]
    assert findings_first(s) == [
        "There is a small left pleural effusion.",
        "Mild cardiomegaly.",
        "No pneumothorax.",
        "Lungs are clear.",
    ]
