"""A BERT encoder for pre-training in plain PyTorch: masked language modelling (+ optional NSP).

Token + position + segment embeddings with LayerNorm, post-LayerNorm encoder blocks
(x = LN(x + attn(x)), x = LN(x + mlp(x))), an MLM head (dense + GELU + LayerNorm, then a decoder
tied to the token embedding plus a bias) and an optional next-sentence head (pooler on the first
token + 2-way classifier): the architecture of Hugging Face's ``BertForPreTraining``, with which
``to_hf_bert`` converts it weight for weight. The attention is ``companion.attention``'s
``MultiHeadAttention``, bidirectional, with padding keys hidden.

>>> import torch
>>> from companion.bert import BertConfig, BertForPreTraining
>>> model = BertForPreTraining(BertConfig(vocab_size=1000))
>>> ids = torch.randint(5, 1000, (2, 16))
>>> labels = torch.full_like(ids, -100); labels[:, 3] = ids[:, 3]   # predict position 3 only
>>> out = model(ids, labels=labels, next_sentence_label=torch.tensor([0, 1]))
>>> out.logits.shape, out.nsp_logits.shape
(torch.Size([2, 16, 1000]), torch.Size([2, 2]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from companion.attention import MultiHeadAttention, sinusoidal_positions

LN_EPS = 1e-12  # BERT's LayerNorm epsilon


@dataclass
class BertConfig:
    """Sizes of a BERT; the defaults make a 4-layer, 128-wide encoder."""

    vocab_size: int
    max_position: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    intermediate: int = 512
    dropout: float = 0.0
    type_vocab_size: int = 2  # segments A and B
    pad_token_id: int = 0
    nsp_head: bool = True  # build the pooler and next-sentence classifier

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


@dataclass
class BertOutput:
    """What `BertForPreTraining.forward` returns (loss is None without labels).

    `logits` (batch, time, vocab) are computed when first read: the loss needs the MLM head only
    at the ~15% selected positions, and scoring every position against the whole vocabulary
    would cost pre-training more than the encoder itself.
    """

    loss: torch.Tensor | None
    hidden_states: torch.Tensor  # (batch, time, n_embd): the last encoder block's output
    nsp_logits: torch.Tensor | None = None  # (batch, 2): 0 = B follows A, 1 = B is random
    mlm_head: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    @cached_property
    def logits(self) -> torch.Tensor:
        """MLM logits of every position, (batch, time, vocab)."""
        return self.mlm_head(self.hidden_states)


class EncoderBlock(nn.Module):
    """Post-LayerNorm block as in BERT: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(config.n_embd, config.n_head, dropout=config.dropout)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=LN_EPS)
        self.fc_in = nn.Linear(config.n_embd, config.intermediate)
        self.fc_out = nn.Linear(config.intermediate, config.n_embd)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=LN_EPS)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        """padding: (batch, time), True (or 1) for real tokens: the keys every query may see."""
        x = self.ln_1(x + self.drop(self.attn(x, padding=padding, need_weights=False)[0]))
        return self.ln_2(x + self.drop(self.fc_out(F.gelu(self.fc_in(x)))))  # exact (erf) GELU


class BertForPreTraining(nn.Module):
    """Embeddings, encoder, MLM head tied to the token embedding, optional NSP head."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        H = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        self.pos_emb = nn.Embedding(config.max_position, H)
        self.seg_emb = nn.Embedding(config.type_vocab_size, H)
        self.emb_ln = nn.LayerNorm(H, eps=LN_EPS)
        self.emb_drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layer))
        # MLM head: transform each position, then score it against every token embedding.
        self.mlm_dense = nn.Linear(H, H)
        self.mlm_ln = nn.LayerNorm(H, eps=LN_EPS)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        if config.nsp_head:  # pooler (first token -> dense -> tanh) + 2-way classifier
            self.pooler = nn.Linear(H, H)
            self.nsp = nn.Linear(H, 2)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])

    def num_parameters(self) -> int:
        """Number of parameters (the tied decoder is the token embedding, counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None) -> BertOutput:
        """MLM logits (+ NSP logits); loss = MLM cross-entropy over labels != -100 (+ NSP loss)."""
        B, T = input_ids.shape
        if T > self.config.max_position:
            raise ValueError(f"sequence of {T} tokens is longer than max_position="
                             f"{self.config.max_position}: truncate it")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        pos = torch.arange(T, device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos) + self.seg_emb(token_type_ids)
        x = self.emb_drop(self.emb_ln(x))
        for block in self.blocks:  # every query may attend to every non-padding key
            x = block(x, attention_mask)
        nsp_logits = self.nsp(torch.tanh(self.pooler(x[:, 0]))) if self.config.nsp_head else None
        loss = None
        if labels is not None:
            selected = labels != -100  # the same mean as cross_entropy(ignore_index=-100) on all logits
            loss = F.cross_entropy(self.mlm_logits(x[selected]), labels[selected])
        if next_sentence_label is not None:
            if nsp_logits is None:
                raise ValueError("next_sentence_label given, but the model has no NSP head: "
                                 "build it with BertConfig(..., nsp_head=True)")
            nsp_loss = F.cross_entropy(nsp_logits, next_sentence_label.reshape(-1))
            loss = nsp_loss if loss is None else loss + nsp_loss
        return BertOutput(loss, x, nsp_logits, self.mlm_logits)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The MLM head: transform each hidden state, then score it against every token embedding."""
        h = self.mlm_ln(F.gelu(self.mlm_dense(hidden)))
        return h @ self.tok_emb.weight.t() + self.mlm_bias  # decoder tied to the embedding


def to_hf_bert(model: BertForPreTraining):
    """Copy our BERT into `transformers.BertForPreTraining` (with NSP head) or `BertForMaskedLM`."""
    from transformers import BertConfig as HFBertConfig
    from transformers import BertForMaskedLM
    from transformers import BertForPreTraining as HFBertForPreTraining

    c = model.config
    hf_config = HFBertConfig(
        vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, intermediate_size=c.intermediate, hidden_act="gelu",
        hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout,
        max_position_embeddings=c.max_position, type_vocab_size=c.type_vocab_size,
        layer_norm_eps=LN_EPS, pad_token_id=c.pad_token_id)
    hf = (HFBertForPreTraining if c.nsp_head else BertForMaskedLM)(hf_config)
    s = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {
        "bert.embeddings.word_embeddings.weight": s["tok_emb.weight"],
        "bert.embeddings.position_embeddings.weight": s["pos_emb.weight"],
        "bert.embeddings.token_type_embeddings.weight": s["seg_emb.weight"],
        "bert.embeddings.LayerNorm.weight": s["emb_ln.weight"],
        "bert.embeddings.LayerNorm.bias": s["emb_ln.bias"],
        "cls.predictions.transform.dense.weight": s["mlm_dense.weight"],
        "cls.predictions.transform.dense.bias": s["mlm_dense.bias"],
        "cls.predictions.transform.LayerNorm.weight": s["mlm_ln.weight"],
        "cls.predictions.transform.LayerNorm.bias": s["mlm_ln.bias"],
        "cls.predictions.bias": s["mlm_bias"],
    }
    for i in range(c.n_layer):
        ours, theirs = f"blocks.{i}.", f"bert.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for a, b in [("attn.q_proj", "attention.self.query"), ("attn.k_proj", "attention.self.key"),
                         ("attn.v_proj", "attention.self.value"),
                         ("attn.out_proj", "attention.output.dense"), ("ln_1", "attention.output.LayerNorm"),
                         ("fc_in", "intermediate.dense"), ("fc_out", "output.dense"),
                         ("ln_2", "output.LayerNorm")]:
                out[theirs + f"{b}.{kind}"] = s[ours + f"{a}.{kind}"]
    if c.nsp_head:
        for kind in ("weight", "bias"):
            out[f"bert.pooler.dense.{kind}"] = s[f"pooler.{kind}"]
            out[f"cls.seq_relationship.{kind}"] = s[f"nsp.{kind}"]
    missing, unexpected = hf.load_state_dict(out, strict=False)
    # decoder.weight is the word embedding, decoder.bias is cls.predictions.bias (both tied)
    missing = [m for m in missing if not m.startswith("cls.predictions.decoder.")]
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval() if not model.training else hf


@torch.no_grad()
def local_attention_init(model: BertForPreTraining, scale: float = 0.1, *, sinusoids: bool = True,
                         identity: bool = True) -> BertForPreTraining:
    """Start attention local: sinusoidal position embeddings and W_q = W_k = identity (in place).

    With BERT's standard init (every weight N(0, 0.02)) attention starts uniform, every position
    sees the same average of the block, and a small MLM model sits at the unigram plateau (the
    pre-training chapter measures it). Here the scores q.k start dominated by the positions'
    sinusoids, whose dot product is largest for nearby positions, so each token first attends to
    its neighbours and the loss leaves the plateau early. `sinusoids=False` or `identity=False`
    leaves that half at BERT's init (an ablation). Only initial values change: the architecture
    (and its conversion to Hugging Face's BertForMaskedLM) is the same.
    """
    if not (sinusoids or identity):
        raise ValueError("sinusoids=False and identity=False change nothing: keep at least one")
    T, H = model.pos_emb.weight.shape
    if sinusoids:
        model.pos_emb.weight.copy_(scale * sinusoidal_positions(T, H))
    if identity:
        for block in model.blocks:
            block.attn.q_proj.weight.copy_(torch.eye(H))
            block.attn.k_proj.weight.copy_(torch.eye(H))
    return model
