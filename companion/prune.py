"""Pruning a BERT-style encoder: zero the smallest weights, or cut whole heads and FFN neurons.

Unstructured magnitude pruning (Han et al., 2015) keeps the largest |w| of the encoder's linear
weights and sets the rest to zero: `magnitude_masks` chooses exactly round(sparsity * n) weights
to drop, over all matrices at once ("global") or matrix by matrix ("layer"), and `apply_masks`
multiplies them in. The matrices keep their shapes, so a dense matmul costs the same.

Structured pruning removes rows and columns instead, and the matrices really shrink:
`prune_heads` slices whole attention heads out of query/key/value and the attention output;
`prune_ffn` slices FFN neurons out of the intermediate and output layers. Importance is weight
magnitude (`head_importance`, `ffn_importance`).

`recover` fine-tunes a pruned classifier with the pruned weights held at zero (Han et al.'s
retraining step); `run_recipe` prunes the book's classifier four ways and recovers each with
several seeds (too long for a chapter).

>>> model = merged_classifier()                      # the book's LoRA classifier, merged
>>> masks = magnitude_masks(encoder_weights(model), 0.5)
>>> apply_masks(model, masks)
>>> zero_fraction(model)
0.5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

SCOPES = ("global", "layer")


def merged_classifier(seed: int = 0) -> nn.Module:
    """The shipped polarity-lora classifier of `seed` with its adapter merged: a plain MiniLM.

    The encoder's weights come back with requires_grad=False (peft froze them before merging):
    call `model.requires_grad_(True)` before fine-tuning all of it.
    """
    from companion.finetune import MeanPoolClassifier
    from companion.recipes import shipped_adapter, shipped_results

    lora = shipped_adapter("polarity-lora", seed)
    config = shipped_results("polarity-lora")["config"]
    model = MeanPoolClassifier(lora.encoder.merge_and_unload(), config["num_labels"], config["dropout"])
    model.head.load_state_dict(lora.head.state_dict())
    return model.eval()


def polarity_data(subset: int | None = None) -> dict:
    """The polarity splits encoded for MiniLM as polarity-lora was trained (the first `subset`
    sentences of each split, for a quick look)."""
    from transformers import AutoTokenizer

    from companion.corpora import load_polarity
    from companion.finetune import MINILM, encode
    from companion.recipes import shipped_results

    max_length = shipped_results("polarity-lora")["config"]["max_length"]
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    polarity, data = load_polarity(), {}
    for split in ("train", "validation", "test"):
        rows = polarity[split]
        if subset is not None:
            rows = rows.select(range(min(subset, len(rows))))
        data[split] = encode(tokenizer, rows["text"], rows["label"], max_length)
    return data


def _layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of a MeanPoolClassifier or a bare BERT encoder."""
    encoder = getattr(model, "encoder", model)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no encoder.layer: not a BERT-style encoder")
    return layers


def encoder_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight matrix of every nn.Linear in the transformer layers (not embeddings, not the head)."""
    prefix = "encoder.encoder.layer" if hasattr(model, "head") else "encoder.layer"
    return {f"{name}.weight": module.weight for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.startswith(prefix)}


def _check_sparsity(sparsity: float) -> float:
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity is the fraction of weights set to zero, in [0, 1); got {sparsity!r}")
    return float(sparsity)


def _smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask, False on the k smallest entries of a 1-D tensor (ties broken by position)."""
    keep = torch.ones(values.numel(), dtype=torch.bool)
    if k:
        keep[torch.sort(values, stable=True).indices[:k]] = False
    return keep


def magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float, *,
                    scope: str = "global") -> dict[str, torch.Tensor]:
    """A bool mask per weight, True where |w| is among the largest: exactly round(sparsity * n)
    weights are dropped over all tensors ("global") or in each tensor ("layer")."""
    sparsity = _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not weights:
        raise ValueError("no weights to prune")
    with torch.no_grad():
        if scope == "layer":
            return {name: _smallest(w.abs().flatten(), round(sparsity * w.numel())).view_as(w)
                    for name, w in weights.items()}
        flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
        keep = _smallest(flat, round(sparsity * flat.numel()))
        masks, start = {}, 0
        for name, w in weights.items():
            masks[name] = keep[start:start + w.numel()].view_as(w)
            start += w.numel()
        return masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Set to zero, in place, every weight of `model` whose mask entry is False."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            if name not in params:
                raise KeyError(f"{name} is not a parameter of the model")
            if params[name].shape != mask.shape:
                raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, "
                                 f"the weight {tuple(params[name].shape)}")
            params[name].mul_(mask.to(params[name].device, params[name].dtype))


def zero_fraction(model: nn.Module) -> float:
    """The fraction of the encoder's linear weights that are exactly zero."""
    weights = encoder_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


# ----------------------------------------------------------------------------- structured

def _slice(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new nn.Linear with only the output rows (dim 0) or input columns (dim 1) in `keep`."""
    weight = layer.weight.detach().index_select(dim, keep).clone()
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=layer.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias[keep] if dim == 0 else layer.bias)
    return new


def head_importance(model: nn.Module) -> torch.Tensor:
    """(layers, heads): the L2 norm of each head's query, key and value rows and output columns."""
    rows = []
    for layer in _layers(model):
        attention = layer.attention.self
        size = attention.attention_head_size
        parts = [attention.query.weight, attention.key.weight, attention.value.weight,
                 layer.attention.output.dense.weight.T]
        squares = sum(p.detach().pow(2).sum(1) for p in parts)  # one entry per head dimension
        rows.append(squares.view(-1, size).sum(1).sqrt())
    return torch.stack(rows)


def ffn_importance(model: nn.Module) -> list[torch.Tensor]:
    """Per layer, one score per FFN neuron: ||row of W_in|| * ||column of W_out||."""
    return [layer.intermediate.dense.weight.detach().norm(dim=1)
            * layer.output.dense.weight.detach().norm(dim=0) for layer in _layers(model)]


def lowest(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """A bool tensor shaped like `scores`, True on the round(fraction * n) lowest scores."""
    _check_sparsity(fraction)
    return ~_smallest(scores.flatten(), round(fraction * scores.numel())).view_as(scores)


def prune_heads(model: nn.Module, heads: Mapping[int, Sequence[int]]) -> nn.Module:
    """Remove attention heads in place: {layer index: [head indices]}; at least one head stays."""
    layers = _layers(model)
    for index, drop in heads.items():
        attention = layers[index].attention.self
        n, size = attention.num_attention_heads, attention.attention_head_size
        drop = sorted(set(int(h) for h in drop))
        if any(not 0 <= h < n for h in drop):
            raise ValueError(f"layer {index} has heads 0..{n - 1}, asked to remove {drop}")
        if len(drop) == n:
            raise ValueError(f"removing all {n} heads of layer {index}: keep at least one")
        if not drop:
            continue
        kept_heads = [h for h in range(n) if h not in drop]
        keep = torch.cat([torch.arange(h * size, (h + 1) * size) for h in kept_heads])
        for name in ("query", "key", "value"):
            setattr(attention, name, _slice(getattr(attention, name), keep, 0))
        output = layers[index].attention.output
        output.dense = _slice(output.dense, keep, 1)
        attention.num_attention_heads = len(kept_heads)
        attention.all_head_size = len(keep)
    return model


def prune_ffn(model: nn.Module, drop: Sequence[torch.Tensor]) -> nn.Module:
    """Remove FFN neurons in place: per layer a bool tensor, True on the neurons to remove."""
    layers = _layers(model)
    if len(drop) != len(layers):
        raise ValueError(f"{len(drop)} masks for {len(layers)} layers")
    for layer, remove in zip(layers, drop):
        if remove.numel() != layer.intermediate.dense.out_features:
            raise ValueError(f"mask of {remove.numel()} neurons for a layer of "
                             f"{layer.intermediate.dense.out_features}")
        if bool(remove.all()):
            raise ValueError("removing every FFN neuron of a layer: keep at least one")
        keep = (~remove.bool()).nonzero().flatten()
        layer.intermediate.dense = _slice(layer.intermediate.dense, keep, 0)
        layer.output.dense = _slice(layer.output.dense, keep, 1)
    return model


def prune_structured(model: nn.Module, *, heads: float = 0.0, ffn: float = 0.0) -> nn.Module:
    """Remove the `heads` fraction of lowest-magnitude heads (over all layers; one stays per layer)
    and the `ffn` fraction of lowest-magnitude FFN neurons of every layer, in place."""
    scores = head_importance(model)
    drop = lowest(scores, heads)
    for index, row in enumerate(drop):  # a layer that would lose every head keeps its best one
        if bool(row.all()):
            row[scores[index].argmax()] = False
    prune_heads(model, {i: row.nonzero().flatten().tolist() for i, row in enumerate(drop)})
    prune_ffn(model, [lowest(s, ffn) for s in ffn_importance(model)])
    return model


def parameter_count(model: nn.Module) -> int:
    """Parameters of a model."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- recovery

def recover(model: nn.Module, train: Sequence[dict], validation: Sequence[dict], *,
            epochs: int = 1, lr: float = 3e-5, masks: Mapping[str, torch.Tensor] | None = None,
            seed: int = 0, desc: str = "recovery") -> dict:
    """Fine-tune a pruned classifier (every weight, AdamW) for `epochs`, keeping the `masks`' zeros
    at zero after every step; validation after each epoch, the best epoch kept. Returns the history."""
    from companion.finetune import FinetuneConfig, train_classifier

    config = FinetuneConfig(method="full", lr=lr, head_lr=lr, epochs=epochs)
    model.requires_grad_(True)  # a merged peft model comes with its base weights frozen
    if masks is None:
        return train_classifier(model, train, validation, config, seed, desc=desc).history
    hooks = [p.register_post_accumulate_grad_hook(_masked_grad(masks[name]))
             for name, p in model.named_parameters() if name in masks]
    try:
        result = train_classifier(model, train, validation, config, seed, desc=desc)
    finally:
        for hook in hooks:
            hook.remove()
    apply_masks(model, masks)  # zero gradient and zero weight stay zero under AdamW; made sure
    return result.history


def _masked_grad(mask: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A hook that zeroes the gradient of pruned weights (their value is zeroed again at the end)."""
    def hook(param: torch.Tensor) -> None:
        if param.grad is not None:
            param.grad.mul_(mask.to(param.grad.device, param.grad.dtype))
    return hook


def pruned_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters as stored (float32: 4 per weight)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())




# ----------------------------------------------------------------------------- recipe

KEY = "prune-recover"
RECIPE_VARIANTS = {"sparsity 20%": {"sparsity": 0.2}, "sparsity 50%": {"sparsity": 0.5},
                   "heads 25%": {"heads": 0.25}, "heads 50% + FFN 50%": {"heads": 0.5, "ffn": 0.5}}


def pruned_variant(teacher: nn.Module, spec: Mapping[str, float]) -> tuple[nn.Module, dict | None]:
    """A pruned copy of `teacher`: {"sparsity": s} (global magnitude masks, returned) or
    {"heads": h, "ffn": f} (structured; masks None)."""
    import copy

    model = copy.deepcopy(teacher)
    if "sparsity" in spec:
        masks = magnitude_masks(encoder_weights(model), spec["sparsity"])
        apply_masks(model, masks)
        return model, masks
    return prune_structured(model, heads=spec.get("heads", 0.0), ffn=spec.get("ffn", 0.0)), None


def run_recipe(out: Path, *, seeds: Sequence[int] = (0, 1, 2), subset: int | None = None,
               epochs: int = 2, lr: float = 3e-5) -> dict:
    """Prune the merged polarity-lora classifier (RECIPE_VARIANTS), then recover each variant with
    `recover` for `epochs` per seed; validation and test accuracy before and after (test scored
    once per final model). Writes results.json into `out` (no weights: each is a pruned copy)."""
    import json
    import time

    from companion.finetune import evaluate
    from companion.provenance import check_run_arguments, environment, seed_summary
    from companion.recipes import run_folder

    seeds = check_run_arguments(seeds, None, subset)
    out = run_folder(out)
    wall = time.perf_counter()
    data = polarity_data(subset)
    teacher = merged_classifier(0)
    dense = {s: evaluate(teacher, data[s]).accuracy for s in ("validation", "test")}
    variants = {}
    for name, spec in RECIPE_VARIANTS.items():
        pruned, _ = pruned_variant(teacher, spec)
        before = {s: evaluate(pruned, data[s]).accuracy for s in ("validation", "test")}
        runs = []
        for seed in seeds:
            model, masks = pruned_variant(teacher, spec)
            start = time.perf_counter()
            history = recover(model, data["train"], data["validation"], epochs=epochs, lr=lr,
                              masks=masks, seed=seed, desc=f"{name} seed {seed}")
            runs.append({"seed": seed, "seconds": round(time.perf_counter() - start, 1),
                         "history": history,
                         "validation_accuracy": evaluate(model, data["validation"]).accuracy,
                         "test_accuracy": evaluate(model, data["test"]).accuracy})
        variants[name] = {
            "spec": dict(spec), "parameters": parameter_count(pruned),
            "zero_fraction": round(zero_fraction(pruned), 6), "before_recovery": before,
            "after_recovery": {k: seed_summary([r[f"{k}_accuracy"] for r in runs])
                               for k in ("validation", "test")},
            "runs": runs}
        after = variants[name]["after_recovery"]["test"]
        print(f"{name}: test accuracy {before['test']:.3f} -> {after['mean']:.3f} ± {after['std']:.3f}",
              flush=True)
    results = {
        "key": KEY, "task": "Pang & Lee sentence polarity (companion.corpora.load_polarity)",
        "full_run": subset is None, "subset": subset, "seeds": seeds,
        "config": {"epochs": epochs, "lr": lr, "lr_source": "not searched",
                   "teacher": "polarity-lora seed 0, merged (prune.merged_classifier)"},
        "protocol": "variants fixed in advance (the chapter's); recovery keeps its best epoch on "
                    "validation; test scored once before and once after recovery per variant and seed",
        "dense": {"parameters": parameter_count(teacher), **dense},
        "split_sizes": {s: len(v) for s, v in data.items()},
        "variants": variants, "wall_seconds": round(time.perf_counter() - wall, 1), **environment(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def headline(results: dict) -> str:
    """One line per variant: test accuracy before recovery and after (mean ± std over seeds)."""
    lines = [f"dense: test accuracy {results['dense']['test']:.3f}"]
    for name, v in results["variants"].items():
        after = v["after_recovery"]["test"]
        lines.append(f"{name}: test accuracy {v['before_recovery']['test']:.3f} before recovery, "
                     f"{after['mean']:.3f} ± {after['std']:.3f} after ({len(results['seeds'])} seeds)")
    return "\n".join(lines)
