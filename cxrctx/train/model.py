"""CLALA-Net (Lesion-aware ROI report generation) in torch: ROI image encoder, BERT-style text encoder, LCA, classifier, decoder.

Faithful to the paper:
- each ROI patch is encoded independently by a ViT (timm; `pretrained=False`, a local
  weights file is loaded when given — nothing is downloaded);
- lesion names go through the text encoder to give E_L (N_lesion × d); a weight matrix with
  rows 0.9 (positive) / 0.1 (negative) multiplies E_L element-wise (Hadamard product);
- LCA: ROI embeddings are the queries, weighted lesion embeddings are keys and values;
- an image-level lesion classifier trained on the labels supplies the lesion statuses at
  inference (training uses the labels: solid vs dashed lines of Fig. 1);
- a transformer text decoder generates each ROI's sentences from its LCA-refined embedding.

Where the paper is silent, chosen here (and said in the README):
- the global classifier is a linear head on the *same* ViT applied to the full image, not
  a separate BioViL-T (not redistributable/offline); its loss is BCE on the 14 statuses;
- LCA output = LayerNorm(R + MHA(R, E_L⊙W, E_L⊙W)) (residual + norm as in a transformer
  block); a learned ROI-position embedding is added to each ROI embedding so the shared
  decoder knows which region it describes;
- text encoder: post-LN transformer encoder with GELU (BERT layout), [CLS]-token pooling,
  sizes of BERT-base in the paper preset, random init unless `text_weights` is given;
- decoder memory = the refined ROI embedding projected to the decoder width (one token).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrctx.errors import CxrctxError
from cxrctx.train.config import TrainConfig
from cxrctx.vocab import LESIONS, ROIS

log = logging.getLogger(__name__)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (weights_only=True: no pickle code)."""
    p = Path(path)
    if not p.exists():
        raise CxrctxError(f"{p}: weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CxrctxError(f"{p}: cannot load weights ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise CxrctxError(f"{p}: not a state dict")
    return sd


class TextEncoder(nn.Module):
    """BERT-style encoder: token + position embeddings, post-LN GELU transformer, [CLS] pooling."""

    def __init__(
        self, vocab_size: int, dim: int, layers: int, heads: int, max_len: int, dropout: float
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.drop(self.norm(self.tok(ids) + self.pos(pos)))
        x = self.encoder(x, src_key_padding_mask=ids.eq(0))
        return x[:, 0]


class RoiDecoder(nn.Module):
    """Autoregressive transformer decoder over one ROI embedding (shared by all 11 ROIs)."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        layers: int,
        heads: int,
        max_len: int,
        embed_dim: int,
        dropout: float,
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.mem = nn.Linear(embed_dim, dim)
        layer = nn.TransformerDecoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """ids (N, T) → logits (N, T, V); memory (N, embed_dim)."""
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        x = self.tok(ids) + self.pos(pos)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=ids.device), diagonal=1)
        h = self.decoder(
            x, self.mem(memory).unsqueeze(1), tgt_mask=causal, tgt_key_padding_mask=ids.eq(0)
        )
        return self.out(self.norm(h))


class ClalaNet(nn.Module):
    def __init__(self, cfg: TrainConfig, vocab_size: int, lesion_tokens: torch.Tensor):
        super().__init__()
        import timm

        self.cfg = cfg
        self.n_rois, self.n_lesions = len(ROIS), len(LESIONS)
        self.vit = timm.create_model(
            cfg.vit_name,
            pretrained=False,
            num_classes=0,
            img_size=cfg.image_size_stage1,
            in_chans=cfg.in_chans,
            dynamic_img_size=True,
            **cfg.vit_kwargs,
        )
        if cfg.vit_weights:
            sd = load_state(cfg.vit_weights)
            sd = {k: v for k, v in sd.items() if not k.startswith("head")}
            if "pos_embed" in sd and sd["pos_embed"].shape != self.vit.pos_embed.shape:
                from timm.layers import resample_abs_pos_embed

                n_prefix = (
                    0 if getattr(self.vit, "no_embed_class", False) else self.vit.num_prefix_tokens
                )
                sd["pos_embed"] = resample_abs_pos_embed(
                    sd["pos_embed"], self.vit.patch_embed.grid_size, num_prefix_tokens=n_prefix
                )
            missing, unexpected = self.vit.load_state_dict(sd, strict=False)
            if missing:
                raise CxrctxError(
                    f"{cfg.vit_weights}: weights do not fit {cfg.vit_name} (missing {missing[:3]}…)"
                )
            log.info(
                "loaded ViT weights from %s (%d unexpected keys)", cfg.vit_weights, len(unexpected)
            )
        feat = self.vit.num_features
        d = cfg.embed_dim
        self.roi_proj = nn.Linear(feat, d)
        self.roi_pos = nn.Parameter(torch.zeros(self.n_rois, d))
        nn.init.normal_(self.roi_pos, std=0.02)
        self.text = TextEncoder(
            vocab_size, cfg.text_dim, cfg.text_layers, cfg.text_heads, cfg.max_tokens, cfg.dropout
        )
        if cfg.text_weights:
            missing, _ = self.text.load_state_dict(load_state(cfg.text_weights), strict=False)
            if missing:
                raise CxrctxError(
                    f"{cfg.text_weights}: weights do not fit the text encoder (missing {missing[:3]}…)"
                )
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.lesion_proj = nn.Linear(cfg.text_dim, d)
        self.register_buffer("lesion_tokens", lesion_tokens.clone(), persistent=False)
        self.lca = nn.MultiheadAttention(d, cfg.lca_heads, dropout=cfg.dropout, batch_first=True)
        self.lca_norm = nn.LayerNorm(d)
        self.cls_head = nn.Linear(feat, self.n_lesions)
        self.decoder = RoiDecoder(
            vocab_size,
            cfg.decoder_dim,
            cfg.decoder_layers,
            cfg.decoder_heads,
            cfg.max_tokens,
            d,
            cfg.dropout,
        )

    # modules trainable in stage 2 (paper: "updates were restricted to the LCA and text decoder")
    def stage2_parameters(self) -> list[nn.Parameter]:
        mods = [self.lca, self.lca_norm, self.lesion_proj, self.decoder]
        return [p for m in mods for p in m.parameters()]

    def _grey_to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = (
            (x - 0.5) / 0.25
        )  # [0,1] → roughly zero-mean; ImageNet-style per-channel stats are not meaningful for grey
        return x.unsqueeze(1).expand(-1, self.cfg.in_chans, -1, -1)

    def encode_rois(self, rois: torch.Tensor) -> torch.Tensor:
        """rois (B, 11, S, S) in [0,1] → raw ROI embeddings (B, 11, d)."""
        B, R, S, _ = rois.shape
        f = self.vit(self._grey_to_input(rois.reshape(B * R, S, S)))
        return self.roi_proj(f).reshape(B, R, -1) + self.roi_pos

    def classify(self, glob: torch.Tensor) -> torch.Tensor:
        """Full image (B, G, G) → 14 lesion logits."""
        return self.cls_head(self.vit(self._grey_to_input(glob)))

    def lesion_embeddings(self) -> torch.Tensor:
        return self.lesion_proj(self.text(self.lesion_tokens))  # (14, d)

    def lca_weights(self, status: torch.Tensor) -> torch.Tensor:
        """status (B, 14) in {0,1} → weights (B, 14, 1): 0.9 positive, 0.1 negative."""
        c = self.cfg
        return (c.lca_neg_weight + (c.lca_pos_weight - c.lca_neg_weight) * status).unsqueeze(-1)

    def refine(self, raw: torch.Tensor, status: torch.Tensor) -> torch.Tensor:
        """LCA: ROI queries attend to the status-weighted lesion embeddings."""
        if not self.cfg.use_lca:
            return raw
        E = self.lesion_embeddings().unsqueeze(0).expand(raw.shape[0], -1, -1)
        kv = E * self.lca_weights(status)  # Hadamard product E_L ⊙ W
        att, _ = self.lca(raw, kv, kv, need_weights=False)
        return self.lca_norm(raw + att)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.text(tokens))

    def forward(self, batch: dict, *, status_source: str = "labels") -> dict[str, torch.Tensor]:
        rois, tokens = batch["rois"], batch["tokens"]
        B, R = rois.shape[:2]
        out: dict[str, torch.Tensor] = {}
        raw = self.encode_rois(rois)
        out["raw"] = raw
        if self.cfg.use_classifier:
            out["cls_logits"] = self.classify(batch["glob"])
        if status_source == "predictions" and "cls_logits" in out:
            status = (
                (torch.sigmoid(out["cls_logits"]) > self.cfg.classifier_threshold).float().detach()
            )
        else:
            status = batch["targets"]
        refined = self.refine(raw, status)
        out["refined"] = refined
        if self.cfg.use_itcl:
            out["text_emb"] = self.encode_text(tokens.reshape(B * R, -1)).reshape(B, R, -1)
        inp = tokens[..., :-1].reshape(B * R, -1)
        out["dec_logits"] = self.decoder(inp, refined.reshape(B * R, -1))
        return out

    @torch.no_grad()
    def generate(
        self, rois: torch.Tensor, glob: torch.Tensor, *, bos: int, eos: int, max_len: int
    ) -> dict[str, torch.Tensor]:
        """Greedy decoding of every ROI; LCA driven by the classifier's predictions (inference path)."""
        B, R = rois.shape[:2]
        raw = self.encode_rois(rois)
        if self.cfg.use_classifier:
            probs = torch.sigmoid(self.classify(glob))
            status = (probs > self.cfg.classifier_threshold).float()
        else:
            probs = torch.zeros(B, self.n_lesions, device=rois.device)
            status = probs
        mem = self.refine(raw, status).reshape(B * R, -1)
        ids = torch.full((B * R, 1), bos, dtype=torch.long, device=rois.device)
        done = torch.zeros(B * R, dtype=torch.bool, device=rois.device)
        for _ in range(max_len - 1):
            nxt = self.decoder(ids, mem)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.zeros_like(nxt), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt.eq(eos)
            if bool(done.all()):
                break
        return {"tokens": ids.reshape(B, R, -1), "probs": probs}


def decoder_targets(tokens: torch.Tensor) -> torch.Tensor:
    return tokens[..., 1:]


def ce_loss(dec_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    tgt = decoder_targets(tokens).reshape(-1)
    return F.cross_entropy(dec_logits.reshape(-1, dec_logits.shape[-1]), tgt, ignore_index=0)
