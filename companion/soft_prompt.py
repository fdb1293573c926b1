"""Prompt tuning from scratch: a few trainable vectors in front of a frozen model's input embeddings.

`SoftPrompt` wraps a `transformers` model (causal LM or encoder), freezes it, and prepends
`n_virtual` trainable embeddings to every input, the way peft's `PROMPT_TUNING` does: the
attention mask gets `n_virtual` leading ones and, for a causal LM, the labels get `n_virtual`
leading -100s, so the loss ignores the virtual positions.

>>> import torch
>>> from transformers import GPT2Config, GPT2LMHeadModel
>>> _ = torch.manual_seed(0)
>>> model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100))
>>> tuned = SoftPrompt(model, n_virtual=4)
>>> tuned.prompt.shape, tuned.prompt.requires_grad, model.transformer.wte.weight.requires_grad
(torch.Size([4, 32]), True, False)
>>> ids = torch.tensor([[5, 6, 7]])
>>> out = tuned(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
>>> out.logits.shape                         # 4 virtual + 3 real positions
torch.Size([1, 7, 100])

`init="text"` starts from the embeddings of a text's tokens, repeated or cut to `n_virtual`:

>>> text_init_ids([7, 8, 9], 7)              # token ids of the init text, peft's repeat/truncate
[7, 8, 9, 7, 8, 9, 7]
"""

from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("random", "text", "sample_vocab")  # peft's PromptTuningInit values, lower-cased


def text_init_ids(token_ids: list[int], n_virtual: int) -> list[int]:
    """Repeat the init text's token ids until there are `n_virtual`, then cut (peft's TEXT rule)."""
    if not token_ids:
        raise ValueError("the init text has no tokens: give a non-empty prompt_tuning init text")
    return (token_ids * math.ceil(n_virtual / len(token_ids)))[:n_virtual]


class SoftPrompt(nn.Module):
    """A frozen `transformers` model with `n_virtual` trainable embeddings prepended to its inputs."""

    def __init__(self, model: nn.Module, n_virtual: int, *, init: str = "random",
                 init_text: str | None = None, tokenizer=None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if n_virtual < 1:
            raise ValueError(f"n_virtual must be >= 1, got {n_virtual}")
        init = str(getattr(init, "value", init)).lower()  # also accepts peft's PromptTuningInit.TEXT
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}: use one of {INITS}")
        self.model = model.requires_grad_(False)  # in place, as peft freezes the model it wraps
        # An encoder-decoder would need the prompt on the encoder side only; not handled here.
        self.causal = model.can_generate() and not model.config.is_encoder_decoder
        embed = model.get_input_embeddings()
        if init == "random":
            # peft leaves its nn.Embedding at torch's default init: N(0, 1) per coordinate, far larger
            # than a trained model's token embeddings (0.02 at init in GPT-2): "text" starts closer.
            weight = torch.randn(n_virtual, embed.weight.shape[1], generator=generator)
        else:
            if init == "text":
                if init_text is None or tokenizer is None:
                    raise ValueError('init="text" needs init_text and the model\'s tokenizer')
                # As peft: tokenizer(text)["input_ids"], special tokens ([CLS], <s>, ...) included.
                ids = text_init_ids(tokenizer(init_text)["input_ids"], n_virtual)
            else:
                ids = torch.randint(0, embed.num_embeddings, (n_virtual,), generator=generator).tolist()
            with torch.no_grad():  # embed(ids), not weight[ids]: some models scale their embeddings
                weight = embed(torch.tensor(ids, device=embed.weight.device)).float().cpu()
        # float32 whatever the model's dtype, as peft; cast to the input dtype in forward.
        self.prompt = nn.Parameter(weight.to(embed.weight.device))

    @property
    def n_virtual(self) -> int:
        """Number of virtual tokens."""
        return self.prompt.shape[0]

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None, **kwargs):
        """Run the model on [prompt; input embeddings] with the mask and (causal) labels extended."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if kwargs.get("position_ids") is not None:
            raise ValueError("position_ids are not supported with a soft prompt: the model numbers "
                             "the virtual and real positions itself (peft drops them too)")
        if inputs_embeds is None:
            inputs_embeds = self.model.get_input_embeddings()(input_ids)
        batch, n = inputs_embeds.shape[0], self.n_virtual
        prompt = self.prompt.to(inputs_embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        inputs_embeds = torch.cat([prompt, inputs_embeds], dim=1)
        if attention_mask is not None:  # the real tokens may attend to every virtual one
            attention_mask = torch.cat([attention_mask.new_ones(batch, n), attention_mask], dim=1)
        if kwargs.get("token_type_ids") is not None:  # peft drops them; segment 0 for the prompt keeps pairs
            kwargs["token_type_ids"] = torch.cat(
                [kwargs["token_type_ids"].new_zeros(batch, n), kwargs["token_type_ids"]], dim=1)
        if labels is not None:
            if self.causal:  # one label per position: the virtual positions predict nothing
                labels = torch.cat([labels.new_full((batch, n), -100), labels], dim=1)
            kwargs["labels"] = labels  # a sequence label (classification) stays as it is
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


@torch.no_grad()
def load_into_peft(soft_prompt: SoftPrompt, peft_model: nn.Module, adapter: str = "default") -> None:
    """Copy our prompt into a peft PROMPT_TUNING model, so both start from the same embeddings."""
    target = peft_model.prompt_encoder[adapter].embedding.weight
    if target.shape != soft_prompt.prompt.shape:
        raise ValueError(f"peft's prompt has shape {tuple(target.shape)}, ours "
                         f"{tuple(soft_prompt.prompt.shape)}: use num_virtual_tokens={soft_prompt.n_virtual} "
                         "and the same model")
    target.copy_(soft_prompt.prompt)
