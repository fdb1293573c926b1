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

`save_lora` writes the adapter to a safetensors file with its r, alpha and target_modules (the
full names of the adapted layers) in the file's metadata; `load_lora` loads it only into a model
wrapped alike, and says how to wrap it otherwise. A merged layer's base weight already holds
B @ A, so the layers `add_lora` makes refuse `state_dict()` and `load_state_dict()` while merged
(the update would count twice in an unmerged model, or the new A and B would not replace it):
unmerge first, or save the adapter alone, which is the same merged or not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

CONFIG_KEYS = ("r", "alpha", "target_modules")  # what an adapter file of save_lora records


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
        layer = LoRALinear(module, r=r, alpha=alpha, dropout=dropout)
        # Hooks rather than methods: the PEFT chapter prints LoRALinear's source, which stays as it is.
        layer.register_state_dict_pre_hook(_refuse_merged_state_dict)
        layer.register_load_state_dict_pre_hook(_check_loaded_state)
        _set_submodule(model, name, layer)
    return model


def _merged_message(names: list[str]) -> str:
    """What is wrong with a merged layer's state, and what to do."""
    shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    return (f"{shown} is merged: its base_layer.weight already holds the LoRA update B @ A, so a state "
            "dict of it would add the update twice in an unmerged model, and new A and B loaded into it "
            "would not replace the old update. Call unmerge() on the LoRA layers first (merge() again "
            "afterwards); save_lora / lora_state_dict give the adapter alone, the same merged or not; "
            "merge_lora(model) gives a plain merged model")


def _refuse_merged_state_dict(layer: LoRALinear, prefix: str, keep_vars: bool) -> None:
    """state_dict pre-hook of the layers add_lora makes: no state dict while merged."""
    if layer.merged:
        raise ValueError(_merged_message([prefix[:-1] or "the LoRA layer"]))


def _check_loaded_state(layer: LoRALinear, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: refuse a merge_lora state dict, and loading into a merged layer."""
    name = prefix[:-1] or "the LoRA layer"
    if prefix + "weight" in state_dict:  # a plain nn.Linear at this name: the state dict of merge_lora
        raise ValueError(f"the state dict has {prefix}weight, a plain nn.Linear weight as merge_lora leaves "
                         f"it, but {name} is a LoRALinear (its weight is {prefix}base_layer.weight): a "
                         "merged model's state dict belongs in the base model, without add_lora")
    if layer.merged and any(key.startswith(prefix) for key in state_dict):
        raise ValueError(_merged_message([name]))


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` by a plain `nn.Linear` holding base + update (in place); returns `model`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            module.merge()
            _set_submodule(model, name, module.base_layer)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors (``<layer>.lora_A.weight``, ``<layer>.lora_B.weight``): peft's adapter keys."""
    return {f"{name}.{part}.weight".lstrip("."): getattr(module, part).weight
            for name, module in model.named_modules() if isinstance(module, LoRALinear)
            for part in ("lora_A", "lora_B")}


def lora_config(model: nn.Module) -> dict:
    """The adapter's r, alpha and target_modules (the full names of its LoRA layers: an add_lora list)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not layers:
        raise ValueError("the model has no LoRALinear layer: wrap it with add_lora(model, target_modules, "
                         "r=..., alpha=...) first (merge_lora replaces them by plain nn.Linear layers)")
    settings = sorted({(m.r, m.alpha) for m in layers.values()})
    if len(settings) > 1:
        raise ValueError(f"the LoRA layers have different (r, alpha): {settings}; an adapter file records "
                         "one r and one alpha: wrap every layer with the same values")
    (r, alpha), = settings
    return {"r": r, "alpha": alpha, "target_modules": list(layers)}


def save_lora(model: nn.Module, path: str | Path) -> None:
    """Write `lora_state_dict(model)` as safetensors, with `lora_config(model)` in the file's metadata."""
    config = lora_config(model)
    tensors = {key: value.detach().cpu().contiguous() for key, value in lora_state_dict(model).items()}
    save_file(tensors, str(path), metadata={key: json.dumps(value) for key, value in config.items()})


def load_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a `save_lora` file into `model` (in place), refusing a different r, alpha or target_modules."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if any(key not in metadata for key in CONFIG_KEYS):
        raise ValueError(f"{path} does not record {', '.join(CONFIG_KEYS)}: it was not written by "
                         "save_lora; load bare lora_A / lora_B tensors with "
                         "model.load_state_dict(tensors, strict=False)")
    saved = {key: json.loads(metadata[key]) for key in CONFIG_KEYS}
    current = lora_config(model)
    problems = [f"{key}={saved[key]} in the file, {key}={current[key]} in the model"
                for key in ("r", "alpha") if saved[key] != current[key]]
    if set(saved["target_modules"]) != set(current["target_modules"]):
        only_file = [n for n in saved["target_modules"] if n not in current["target_modules"]]
        only_model = [n for n in current["target_modules"] if n not in saved["target_modules"]]
        problems.append(f"target_modules differ (only in the file: {only_file[:4]}, only in the model: "
                        f"{only_model[:4]})")
    if problems:
        targets = saved["target_modules"]
        shown = f"{targets[:4]}"[:-1] + (", ...]" if len(targets) > 4 else "]")
        raise ValueError(f"{path} was saved from a LoRA model wrapped differently: {'; '.join(problems)}. "
                         f"Wrap the base model as it was: add_lora(model, {shown}, r={saved['r']}, "
                         f"alpha={saved['alpha']}) (the full list: lora_config or the file's metadata)")
    merged = [name for name, m in model.named_modules() if isinstance(m, LoRALinear) and m.merged]
    if merged:  # checked here too, so that nothing is half loaded (and for layers not made by add_lora)
        raise ValueError(_merged_message(merged))
    expected = set(lora_state_dict(model))
    if set(tensors) != expected:
        raise ValueError(f"{path} holds tensors {sorted(set(tensors) - expected)[:4]} and lacks "
                         f"{sorted(expected - set(tensors))[:4]}: it does not match its own metadata")
    model.load_state_dict(tensors, strict=False)
    return model


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight counts once, as in peft."""
    params = list(model.parameters())  # parameters() yields a shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
