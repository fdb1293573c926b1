"""LoRA from scratch: a frozen `nn.Linear` plus a trainable low-rank update, the same as `peft`'s.

`LoRALinear` computes ``base(x) + B(A(dropout(x))) * alpha / r`` with A of shape (r, in) and
B of shape (out, r). B starts at zero, so a freshly wrapped layer equals the layer it wraps:

>>> import torch
>>> from torch import nn
>>> _ = torch.manual_seed(0)
>>> layer = LoRALinear(nn.Linear(64, 64), r=4, alpha=8)
>>> x = torch.randn(2, 64)
>>> torch.equal(layer(x), layer.base_layer(x))
True
>>> count_trainable(layer)                   # A and B: 4*64 + 64*4, out of 64*64 + 64 + 512
(512, 4672)

`add_lora` wraps every `nn.Linear` of a model whose name ends with one of `target_modules`
(peft's matching rule) and freezes everything else; `merge_lora` folds the updates back into
plain `nn.Linear` layers for inference:

>>> model = nn.Sequential()
>>> model.add_module("attn", nn.ModuleDict({"query": nn.Linear(8, 8), "key": nn.Linear(8, 8)}))
>>> model = add_lora(model, ["query"], r=2, alpha=4)
>>> type(model.attn.query).__name__, type(model.attn.key).__name__
('LoRALinear', 'Linear')
>>> sorted(lora_state_dict(model))           # what an adapter file holds
['attn.query.lora_A.weight', 'attn.query.lora_B.weight']
>>> type(merge_lora(model).attn.query).__name__
'Linear'
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus ``lora_B(lora_A(dropout(x))) * alpha / r``, with peft's shapes and init."""

    def __init__(self, base_layer: nn.Linear, *, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        if r < 1:
            raise ValueError(f"the LoRA rank r must be >= 1, got {r}")
        self.base_layer = base_layer.requires_grad_(False)
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r  # peft's default; use_rslora=True would use alpha / sqrt(r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Same on the device and dtype as the base weight, so a wrapped half-precision model still runs.
        kw = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **kw)
        # peft's default init (from Microsoft's loralib): A like nn.Linear's own weight, B zero,
        # so B @ A = 0 and training starts from the base model exactly.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update ``B @ A * alpha / r`` as an (out, in) matrix, the shape of the base weight."""
        return self.lora_B.weight @ self.lora_A.weight * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the low-rank update (just the base output once merged: no double count)."""
        result = self.base_layer(x)
        if self.merged:
            return result
        return result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight, so inference costs one matmul; a second call does nothing."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from the base weight again (equal up to float rounding, as in peft)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def _matches(name: str, targets: list[str]) -> bool:
    """peft's rule for a list of target_modules: the name is a target or ends with "." + target."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called `name` (dotted path) by `new`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def add_lora(model: nn.Module, target_modules: list[str], *, r: int = 8, alpha: float = 16,
             dropout: float = 0.0) -> nn.Module:
    """Freeze `model` and wrap each `nn.Linear` whose name ends with a target in a `LoRALinear` (in place)."""
    if isinstance(target_modules, str):  # a bare string is a regex in peft: ask for the list form
        raise TypeError(f"target_modules must be a list of names, e.g. [{target_modules!r}]")
    matched = [(name, module) for name, module in model.named_modules()
               if name and _matches(name, target_modules)]
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not matched:
        if not linear_names:
            raise ValueError(f"no module matches target_modules={target_modules}, and the model "
                             "has no nn.Linear layer to adapt")
        raise ValueError(f"no module of the model matches target_modules={target_modules}; its "
                         f"nn.Linear layers include {linear_names[:8]}: use the last part of such "
                         f"a name, e.g. [{linear_names[0].rsplit('.', 1)[-1]!r}]")
    not_linear = [f"{name} ({type(module).__name__})" for name, module in matched
                  if type(module) is not nn.Linear]
    if not_linear:
        # GPT-2's Conv1D, an already wrapped LoRALinear, or a whole block would be adapted wrongly.
        raise ValueError(f"target_modules={target_modules} matches modules that are not nn.Linear: "
                         f"{not_linear[:8]}; pick names of nn.Linear layers, e.g. {linear_names[:8]}")
    model.requires_grad_(False)
    for name, module in matched:
        _set_submodule(model, name, LoRALinear(module, r=r, alpha=alpha, dropout=dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` by a plain `nn.Linear` holding base + update (in place); returns `model`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            _set_submodule(model, name, module.base_layer)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors (``<layer>.lora_A.weight``, ``<layer>.lora_B.weight``): an adapter file."""
    return {f"{name}.{part}.weight".lstrip("."): getattr(module, part).weight
            for name, module in model.named_modules() if isinstance(module, LoRALinear)
            for part in ("lora_A", "lora_B")}


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight counts once, as in peft."""
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
