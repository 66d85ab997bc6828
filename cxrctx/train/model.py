"""CLALA-Net (Lesion-aware ROI report generation) in torch: ROI image encoder, BERT-style text encoder, LCA, classifier, decoder.

Faithful to the paper:
- each ROI patch is encoded independently by a ViT (timm; `pretrained=False`, a local
  weights file is loaded when given — nothing is downloaded);
- lesion names go through the text encoder to give E_L (N_lesion × d); a weight matrix with
  rows 0.9 (positive) / 0.1 (negative) multiplies E_L element-wise (Hadamard product);
- LCA: ROI embeddings are the queries, weighted lesion embeddings are keys and values;
- a separate image-level lesion classifier trained on the labels (its own stage, run
  first: `cxrctx.train.classifier`) supplies the lesion statuses; it is frozen here;
- a transformer text decoder generates each ROI's sentences from its LCA-refined embedding.

What the model sees at inference, it sees in training: LCA statuses come from the
frozen classifier (hard statuses at its per-lesion thresholds, calibrated on the validation
split and stored with it, or soft weights 0.1 + 0.8·p); in stage 1 the labels are blended
into the predictions on a schedule that ends at pure predictions, and stage 2 trains LCA
and the decoder on exactly the test-time statuses.

Where the paper is silent, chosen here (and said in the README):
- the global classifier is any timm backbone (BioViL-T itself is not redistributable
  offline; a local CLIP-style tower in timm layout can stand in); its loss is BCE on the
  14 statuses;
- LCA output = LayerNorm(R + MHA(R, E_L⊙W, E_L⊙W)) (residual + norm as in a transformer
  block); a learned ROI-position embedding is added to each ROI embedding so the shared
  decoder knows which region it describes;
- text encoder: post-LN transformer encoder with GELU (BERT layout), [CLS]-token pooling,
  sizes of BERT-base in the paper preset, random init unless `text_weights` is given;
- decoder memory = the refined ROI embedding, a "has finding" gate token and the 14
  status-weighted lesion tokens (the same E_L ⊙ W that LCA attends to), each projected to
  the decoder width, and one token made from the 14 statuses by a linear map (which
  lesions are present, readable without first learning where to attend). A per-ROI head
  predicts whether the region has a finding (the ROI rows' `abnormal` flag) from the ROI
  embedding and the classifier's 14 statuses; its decision (teacher-forced in training)
  is the gate token, and an open gate forbids ending the text before it starts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrctx.errors import CxrctxError
from cxrctx.train.bert import make_text_encoder
from cxrctx.train.classifier import LesionClassifier
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


class RoiDecoder(nn.Module):
    """Autoregressive transformer decoder over a few memory tokens (shared by all 11 ROIs)."""

    def __init__(
        self, vocab_size: int, dim: int, layers: int, heads: int, max_len: int, dropout: float
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerDecoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab_size)

    def forward(self, ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """ids (N, T) → logits (N, T, V); memory (N, M, dim)."""
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        x = self.tok(ids) + self.pos(pos)
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=ids.device), diagonal=1)
        h = self.decoder(x, memory, tgt_mask=causal, tgt_key_padding_mask=ids.eq(0))
        return self.out(self.norm(h))


def _load_vit(cfg: TrainConfig) -> Any:
    import timm

    vit: Any = timm.create_model(
        cfg.vit_name,
        pretrained=False,
        num_classes=0,
        img_size=cfg.image_size_stage1,
        in_chans=cfg.in_chans,
        dynamic_img_size=True,
        **cfg.vit_kwargs,
    )
    if not cfg.vit_weights:
        return vit
    sd = load_state(cfg.vit_weights)
    sd = {k: v for k, v in sd.items() if not k.startswith("head")}
    if "pos_embed" in sd and sd["pos_embed"].shape != vit.pos_embed.shape:
        from timm.layers import resample_abs_pos_embed

        n_prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        sd["pos_embed"] = resample_abs_pos_embed(
            sd["pos_embed"], vit.patch_embed.grid_size, num_prefix_tokens=n_prefix
        )
    missing, unexpected = vit.load_state_dict(sd, strict=False)
    if missing:
        raise CxrctxError(
            f"{cfg.vit_weights}: weights do not fit {cfg.vit_name} (missing {missing[:3]}…)"
        )
    log.info("loaded ViT weights from %s (%d unexpected keys)", cfg.vit_weights, len(unexpected))
    return vit


class ClalaNet(nn.Module):
    lesion_thresholds: torch.Tensor
    finding_threshold: torch.Tensor

    def __init__(self, cfg: TrainConfig, vocab_size: int, lesion_tokens: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.n_rois, self.n_lesions = len(ROIS), len(LESIONS)
        self.vit: Any = _load_vit(cfg)
        feat, d, dd = self.vit.num_features, cfg.embed_dim, cfg.decoder_dim
        self.roi_proj = nn.Linear(feat, d)
        self.roi_pos = nn.Parameter(torch.zeros(self.n_rois, d))
        nn.init.normal_(self.roi_pos, std=0.02)
        self.text = make_text_encoder(cfg, vocab_size)
        if cfg.text_weights:
            missing, _ = self.text.load_state_dict(load_state(cfg.text_weights), strict=False)
            if missing:
                raise CxrctxError(
                    f"{cfg.text_weights}: weights do not fit the text encoder (missing {missing[:3]}…)"
                )
        self.text_proj = nn.Linear(self.text.width, d)
        self.lesion_proj = nn.Linear(self.text.width, d)
        self.register_buffer("lesion_tokens", lesion_tokens.clone(), persistent=False)
        self.lca = nn.MultiheadAttention(d, cfg.lca_heads, dropout=cfg.dropout, batch_first=True)
        self.lca_norm = nn.LayerNorm(d)
        self.classifier = LesionClassifier(cfg) if cfg.use_classifier else None
        self.finding_head = nn.Linear(d + self.n_lesions, 1)
        self.mem_roi = nn.Linear(d, dd)
        self.mem_lesion = nn.Linear(d, dd)
        self.mem_gate = nn.Embedding(2, dd)
        self.mem_status = nn.Linear(self.n_lesions, dd)
        self.decoder = RoiDecoder(
            vocab_size, dd, cfg.decoder_layers, cfg.decoder_heads, cfg.max_tokens, cfg.dropout
        )
        # calibrated on the validation split at the end of each stage; saved with the weights
        self.register_buffer("lesion_thresholds", torch.full((14,), cfg.classifier_threshold))
        self.register_buffer("finding_threshold", torch.tensor(0.5))

    def train(self, mode: bool = True) -> ClalaNet:
        """The classifier stays in eval mode: it is frozen after its own stage."""
        super().train(mode)
        if self.classifier is not None:
            self.classifier.eval()
        return self

    def load_classifier(self, state: dict[str, torch.Tensor], thresholds: torch.Tensor) -> None:
        """Install a trained classifier (weights + calibrated thresholds) and freeze it."""
        if self.classifier is None:
            raise CxrctxError("use_classifier=false: this model has no classifier to load")
        self.classifier.load_state_dict(state)
        self.lesion_thresholds.copy_(thresholds.to(self.lesion_thresholds))
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.classifier.eval()

    # modules trainable in stage 2 (paper: "updates were restricted to the LCA and text decoder")
    def stage2_parameters(self) -> list[nn.Parameter]:
        mods = [self.lca, self.lca_norm, self.lesion_proj, self.finding_head]
        mods += [self.mem_roi, self.mem_lesion, self.mem_gate, self.mem_status, self.decoder]
        return [p for m in mods for p in m.parameters()]

    def _grey_to_input(self, x: torch.Tensor) -> torch.Tensor:
        # [0,1] → roughly zero-mean; ImageNet per-channel statistics mean nothing for grey
        return ((x - 0.5) / 0.25).unsqueeze(1).expand(-1, self.cfg.in_chans, -1, -1)

    def encode_rois(self, rois: torch.Tensor) -> torch.Tensor:
        """rois (B, 11, S, S) in [0,1] → raw ROI embeddings (B, 11, d)."""
        B, R, S, _ = rois.shape
        f = self.vit(self._grey_to_input(rois.reshape(B * R, S, S)))
        return self.roi_proj(f).reshape(B, R, -1) + self.roi_pos

    def classify(self, glob: torch.Tensor) -> torch.Tensor:
        """Full image (B, G, G) → 14 lesion logits of the frozen classifier (no gradient)."""
        if self.classifier is None:
            raise CxrctxError("LCA needs the lesion classifier (use_classifier=true)")
        with torch.no_grad():
            return self.classifier(glob).detach()

    def gate_logits(self, refined: torch.Tensor, status: torch.Tensor) -> torch.Tensor:
        """Per-ROI 'has finding' logits (B, R) from the ROI embedding and the 14 statuses."""
        st = status.unsqueeze(1).expand(-1, refined.shape[1], -1).to(refined.dtype)
        return self.finding_head(torch.cat([refined, st], -1)).squeeze(-1)

    def lesion_embeddings(self) -> torch.Tensor:
        return self.lesion_proj(self.text(self.lesion_tokens))  # (14, d)

    def lca_weights(self, status: torch.Tensor) -> torch.Tensor:
        """status (B, 14) in [0,1] → weights (B, 14, 1): 0.9 positive, 0.1 negative, linear between."""
        c = self.cfg
        return (c.lca_neg_weight + (c.lca_pos_weight - c.lca_neg_weight) * status).unsqueeze(-1)

    def weighted_lesions(self, status: torch.Tensor) -> torch.Tensor:
        """E_L ⊙ W (B, 14, d): the lesion tokens LCA attends to."""
        E = self.lesion_embeddings().unsqueeze(0).expand(status.shape[0], -1, -1)
        return E * self.lca_weights(status)

    def refine(self, raw: torch.Tensor, status: torch.Tensor) -> torch.Tensor:
        """LCA: ROI queries attend to the status-weighted lesion embeddings."""
        if not self.cfg.use_lca:
            return raw
        kv = self.weighted_lesions(status)
        att, _ = self.lca(raw, kv, kv, need_weights=False)
        return self.lca_norm(raw + att)

    def inference_status(self, cls_logits: torch.Tensor) -> torch.Tensor:
        """What LCA gets from the classifier: p (soft) or p > calibrated threshold (hard)."""
        p = torch.sigmoid(cls_logits.float()).detach()
        if self.cfg.lca_status == "calibrated":
            return (p > self.lesion_thresholds).float()
        return p

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.text(tokens))

    def memory(self, refined: torch.Tensor, status: torch.Tensor, gate: torch.Tensor | None):
        """Decoder memory per ROI (B·R, M, dim): refined ROI [+ gate] [+ 14 lesions] [+ status]."""
        B, R, _ = refined.shape
        parts = [self.mem_roi(refined).reshape(B * R, 1, -1)]
        if gate is not None:
            parts.append(self.mem_gate(gate.long()).reshape(B * R, 1, -1))
        if self.cfg.use_lca and self.cfg.decoder_lesion_memory:
            les = self.mem_lesion(self.weighted_lesions(status))  # (B, 14, dim)
            parts.append(les.unsqueeze(1).expand(-1, R, -1, -1).reshape(B * R, self.n_lesions, -1))
        if self.cfg.use_lca and self.cfg.decoder_status_token:
            st = self.mem_status(status.to(refined.dtype))  # (B, dim): which lesions, at once
            parts.append(st.unsqueeze(1).expand(-1, R, -1).reshape(B * R, 1, -1))
        return torch.cat(parts, 1)

    def statuses(self, batch: dict, out: dict, label_mix: float) -> torch.Tensor:
        """LCA statuses: the classifier's (blended with the labels by `label_mix` in training)."""
        if "cls_logits" not in out:
            if self.cfg.use_lca:
                raise CxrctxError("LCA needs the lesion classifier (use_classifier=true)")
            return torch.zeros(out["raw"].shape[0], self.n_lesions, device=out["raw"].device)
        q = self.inference_status(out["cls_logits"])
        if label_mix <= 0.0:
            return q
        return label_mix * batch["targets"].float() + (1.0 - label_mix) * q

    def forward(self, batch: dict, *, label_mix: float = 0.0) -> dict[str, torch.Tensor]:
        """Training/validation pass; `label_mix` 0 = exactly the inference statuses."""
        rois, tokens = batch["rois"], batch["tokens"]
        B, R = rois.shape[:2]
        out: dict[str, torch.Tensor] = {"raw": self.encode_rois(rois)}
        if self.cfg.use_classifier:
            out["cls_logits"] = self.classify(batch["glob"])
        status = self.statuses(batch, out, label_mix)
        refined = self.refine(out["raw"], status)
        out["refined"] = refined
        gate = None
        if self.cfg.use_finding_head:
            out["finding_logits"] = self.gate_logits(refined, status)
            gate = batch.get("abnormal")
            if gate is None:  # no ROI flags (e.g. a bare batch): the head decides
                gate = out["finding_logits"] > 0
        if self.cfg.use_itcl:
            out["text_emb"] = self.encode_text(tokens.reshape(B * R, -1)).reshape(B, R, -1)
        inp = tokens[..., :-1].reshape(B * R, -1)
        out["dec_logits"] = self.decoder(inp, self.memory(refined, status, gate))
        return out

    @torch.no_grad()
    def generate(
        self, rois: torch.Tensor, glob: torch.Tensor, *, bos: int, eos: int, max_len: int
    ) -> dict[str, torch.Tensor]:
        """Greedy decoding of every ROI on the inference path (classifier → LCA → gate → decoder).

        Returns tokens (B, R, T), probs (B, 14), status (B, 14; hard, calibrated thresholds),
        finding (B, R; has-finding probability) and gate (B, R; open = must write).
        """
        B, R = rois.shape[:2]
        out: dict[str, torch.Tensor] = {"raw": self.encode_rois(rois)}
        dev = rois.device
        if self.cfg.use_classifier:
            out["cls_logits"] = self.classify(glob)
            probs = torch.sigmoid(out["cls_logits"].float())
            hard = (probs > self.lesion_thresholds).float()
        else:
            probs = torch.zeros(B, self.n_lesions, device=dev)  # no classifier: nothing predicted
            hard = torch.zeros(B, self.n_lesions, device=dev)
        status = self.statuses({}, out, 0.0)
        refined = self.refine(out["raw"], status)
        gate = finding = None
        if self.cfg.use_finding_head:
            finding = torch.sigmoid(self.gate_logits(refined, status).float())
            gate = finding > self.finding_threshold
        mem = self.memory(refined, status, gate)
        ids = self._greedy(mem, gate, bos=bos, eos=eos, max_len=max_len)
        res = {"tokens": ids.reshape(B, R, -1), "probs": probs, "status": hard}
        if finding is not None and gate is not None:
            res.update(finding=finding, gate=gate)
        return res

    def _greedy(self, mem, gate, *, bos: int, eos: int, max_len: int) -> torch.Tensor:
        N = mem.shape[0]
        ids = torch.full((N, 1), bos, dtype=torch.long, device=mem.device)
        done = torch.zeros(N, dtype=torch.bool, device=mem.device)
        must = gate.reshape(-1) if gate is not None else None
        for t in range(max_len - 1):
            logits = self.decoder(ids, mem)[:, -1]
            if t == 0 and must is not None:  # an open gate: the region has something to say
                logits[must, eos] = float("-inf")
            nxt = logits.argmax(-1)
            nxt = torch.where(done, torch.zeros_like(nxt), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt.eq(eos)
            if bool(done.all()):
                break
        return ids


def decoder_targets(tokens: torch.Tensor) -> torch.Tensor:
    return tokens[..., 1:]


def ce_loss(
    dec_logits: torch.Tensor, tokens: torch.Tensor, per_sequence: bool = True
) -> torch.Tensor:
    """Decoder cross-entropy. `per_sequence`: each ROI text's mean token loss, averaged over
    texts, so a short sentence weighs as much as a long one (else the mean over all tokens)."""
    tgt = decoder_targets(tokens).reshape(dec_logits.shape[0], -1)
    flat = F.cross_entropy(
        dec_logits.reshape(-1, dec_logits.shape[-1]).float(),
        tgt.reshape(-1),
        ignore_index=0,
        reduction="none",
    ).reshape(tgt.shape)
    mask = tgt.ne(0)
    if not per_sequence:
        return flat.sum() / mask.sum().clamp(min=1)
    n = mask.sum(1)
    per = flat.sum(1) / n.clamp(min=1)
    keep = n > 0
    return per[keep].mean() if bool(keep.any()) else flat.sum() * 0.0


def finding_loss(logits: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """BCE of the per-ROI "has finding" head against the ROI rows' abnormal flags."""
    return F.binary_cross_entropy_with_logits(logits.float(), abnormal.float())
