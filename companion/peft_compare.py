"""Parameter-efficient fine-tuning compared on Pang & Lee polarity: one MiniLM, many ways to train it.

Every method of `METHODS` turns all-MiniLM-L6-v2 into a `MeanPoolClassifier` (mean pooling + a linear
head, as in `companion.finetune`) whose trainable parameters are exactly what the method trains:
a linear probe, BitFit, LoRA at ranks 1-16, DoRA and rsLoRA (peft), IA3 (peft), Houlsby bottleneck
adapters (written here: peft has none), prompt tuning (peft), full fine-tuning, and LoRA on a base
whose linear weights are held in int8 (QLoRA's idea, by hand, on CPU). `run_method` trains one method
with one seed through `finetune.train_classifier` and measures test/validation accuracy, trainable
parameters, training time, memory (see `measure_memory`) and the bytes its weights take on disk;
`run_compare` runs methods x seeds into `results.json` (mean ± std per metric, resumable after an
interruption), `headline` prints the table, and `adapter_workflow` checks peft's multi-adapter API
(`save_pretrained`/`from_pretrained`, `load_adapter`, `set_adapter`, `add_weighted_adapter`,
`merge_and_unload`) on MiniLM.

    python -m companion.peft_compare --out runs/peft-compare            # every method, seeds 0 1 2
    python -m companion.peft_compare --methods lora-r8 ia3 --max-steps 5 --subset 64 --seeds 0

>>> data = polarity_data(subset=16)                   # the first 16 sentences of each split
>>> run = run_method("ia3", seed=0, data=data, max_steps=2)
>>> run["trainable_parameters"], run["memory"]["optimizer_bytes"] > 2 * 4 * 14594  # AdamW's 2 moments
(14594, True)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from companion.finetune import (
    MINILM,
    FinetuneConfig,
    MeanPoolClassifier,
    _quiet_peft,
    evaluate,
    lora_config,
    save_adapter,
    train_classifier,
    trainable_parameters,
)
from companion.provenance import environment, seed_summary

MAX_LENGTH = 64  # tokens per sentence, as in the polarity recipes
SEARCHED = "searched: polarity-search, validation accuracy of seed 0 (results/polarity-search)"
METRICS = ("test_accuracy", "validation_accuracy", "train_seconds", "peak_bytes", "disk_bytes")


@dataclass(frozen=True)
class Method:
    """How one method makes its trainable model from MiniLM, and how it is trained."""

    name: str
    kind: str  # probe, bitfit, lora, ia3, adapter, prompt, int8-lora, full
    lr: float  # the method's own weights (ignored by the probe: head only)
    lr_source: str  # where lr comes from
    head_lr: float = 1e-3  # the classification head (polarity-lora's)
    rank: int = 0  # LoRA rank / adapter bottleneck width / virtual tokens
    alpha: float = 0.0  # LoRA alpha (scale alpha / r, or alpha / sqrt(r) with rsLoRA)
    dora: bool = False
    rslora: bool = False
    probe_init: bool = False  # LP-FT: start the head from a logistic regression on frozen vectors
    epochs: int = 6  # 6 x 100 steps of 32 sentences on the 3,200 training sentences

    def config(self) -> FinetuneConfig:
        """The FinetuneConfig that `finetune.train_classifier` trains this method with."""
        return FinetuneConfig(method="full" if self.kind == "full" else "lora", lr=self.lr,
                              head_lr=self.head_lr, epochs=self.epochs, probe_init=self.probe_init,
                              lora_r=self.rank if self.kind in ("lora", "int8-lora") else 8,
                              lora_alpha=int(self.alpha) if self.kind in ("lora", "int8-lora") else 16)


def _lora(r: int, lr_source: str = "not searched: polarity-lora's 5e-4; alpha = 2r keeps the scale at 2",
          **kw) -> Method:
    """LoRA of rank r on every linear layer (alpha 2r: polarity-lora's 16 at r=8)."""
    name = "dora" if kw.get("dora") else "rslora" if kw.get("rslora") else "lora"
    return Method(f"{name}-r{r}", "lora", 5e-4, lr_source, rank=r, alpha=2 * r, **kw)


METHODS: dict[str, Method] = {m.name: m for m in [
    # head only on frozen mean-pooled vectors, trained by the same AdamW loop (not sklearn): the same
    # time and memory accounting as the others; a linear head alone takes a larger step
    Method("probe", "probe", 1e-2, "not searched: head lr 1e-2, a larger step for a head alone (lr unused)",
           head_lr=1e-2),
    # BitFit (Ben Zaken et al. 2022): every bias of the encoder (LayerNorm biases too) + head
    Method("bitfit", "bitfit", 1e-3, "not searched: BitFit's usual range 1e-4..1e-3, the top"),
    _lora(1), _lora(4),
    _lora(8, "searched: polarity-search chose 5e-4 for LoRA r=8 (results/polarity-search)"),
    _lora(16),
    # DoRA (Liu et al. 2024) uses LoRA's learning rate; +1 magnitude per output feature of each linear
    _lora(8, "not searched: LoRA's 5e-4 (DoRA's paper keeps LoRA's hyperparameters)", dora=True),
    # rsLoRA (Kalajdzievski 2023): scale alpha / sqrt(r) = 5.66 at r=8 instead of alpha / r = 2
    _lora(8, "not searched: LoRA's 5e-4 (the larger scale is the point of rsLoRA)", rslora=True),
    # IA3 (Liu et al. 2022, T-Few): learned scales of keys, values and the FFN's inner activations
    Method("ia3", "ia3", 3e-3, "not searched: T-Few's 3e-3"),
    # Houlsby et al. 2019: a bottleneck of 32 after each attention and FFN output + every LayerNorm
    Method("adapter", "adapter", 1e-3, "not searched: Houlsby's range 1e-4..1e-3, the top", rank=32),
    # Lester et al. 2021: 10 virtual tokens before every sentence (0.3 with Adafactor there)
    Method("prompt-tuning", "prompt", 3e-2, "not searched: peft's examples' 3e-2 for AdamW", rank=10),
    # QLoRA's idea on CPU: frozen int8 linear weights (per-output-channel absmax), LoRA r=8 on top
    Method("int8-lora-r8", "int8-lora", 5e-4, "not searched: LoRA r=8's searched 5e-4", rank=8, alpha=16),
    Method("full", "full", 2e-4, SEARCHED + ": lr 2e-4 with LP-FT (searched at 4 epochs, run at 6)",
           probe_init=True),
]}


def method_spec(method: str) -> Method:
    """The Method called `method`; ValueError listing the valid names otherwise."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    return METHODS[method]


# ----------------------------------------------------------------------------- hand-written methods

class Bottleneck(nn.Module):
    """Houlsby's adapter: x + up(gelu(down(x))), the up-projection zero-initialised (starts as identity)."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, size), nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input plus the bottleneck's correction."""
        return x + self.up(nn.functional.gelu(self.down(x)))


class Adapted(nn.Module):
    """A frozen linear layer followed by a trainable bottleneck adapter."""

    def __init__(self, linear: nn.Linear, size: int) -> None:
        super().__init__()
        self.linear, self.adapter = linear, Bottleneck(linear.out_features, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """adapter(linear(x))."""
        return self.adapter(self.linear(x))


def add_adapters(encoder: nn.Module, size: int) -> nn.Module:
    """Put a bottleneck after every BERT layer's attention output and FFN output projections (before the
    residual sum and LayerNorm, as Houlsby et al.); freeze all but the adapters and LayerNorms."""
    for p in encoder.parameters():
        p.requires_grad = False
    for layer in encoder.encoder.layer:
        for output in (layer.attention.output, layer.output):
            output.dense = Adapted(output.dense, size)
    for name, p in encoder.named_parameters():
        p.requires_grad = ".adapter." in name or "LayerNorm" in name
    return encoder


class _Int8Matmul(torch.autograd.Function):
    """x @ (int8 weight * scale).T + bias, keeping only the int8 weight for backward (as QLoRA)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight, scale)
        return nn.functional.linear(x, weight.to(x.dtype) * scale.to(x.dtype)[:, None], bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, scale = ctx.saved_tensors
        return grad @ (weight.to(grad.dtype) * scale.to(grad.dtype)[:, None]), None, None, None


class Int8Linear(nn.Linear):
    """A frozen linear layer held as int8 with one absmax scale per output row, dequantised in forward.
    An `nn.Linear` subclass (as bitsandbytes' 8-bit layers are), so `companion.lora.LoRALinear` wraps it."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: no float weight is allocated
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = w.abs().amax(1).clamp(min=1e-12) / 127
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                  requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The fp32 weight the int8 one stands for (a new tensor: it cannot be updated in place)."""
        return self.dequantized()

    @weight.setter
    def weight(self, value: torch.Tensor) -> None:
        raise AttributeError("an int8 base layer cannot take a merged LoRA update: dequantize the model "
                             "(keep the fp32 base) and merge there")

    def dequantized(self) -> torch.Tensor:
        """The fp32 weight the int8 one stands for."""
        return self.weight_int8.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T + b with W dequantised on the fly; only the int8 weight is kept for backward."""
        return _Int8Matmul.apply(x, self.weight_int8, self.scale, self.bias)


def quantized_lora(encoder: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.1) -> nn.Module:
    """QLoRA's idea by hand: every linear layer of `encoder` (peft's "all-linear" set) held in int8
    (`Int8Linear`) and wrapped in `companion.lora.LoRALinear` (r, alpha); all but the LoRA pairs frozen."""
    from companion.lora import LoRALinear

    for p in encoder.parameters():
        p.requires_grad = False
    linears = [(name, m) for name, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    for name, linear in linears:
        parent, _, child = name.rpartition(".")
        setattr(encoder.get_submodule(parent) if parent else encoder, child,
                LoRALinear(Int8Linear(linear), r=r, alpha=alpha, dropout=dropout))
    return encoder


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the encoder's linear-layer weights as held (fp32 matrices, or int8 + fp32 scales)."""
    total = 0
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += module.weight_int8.nbytes + module.scale.nbytes
        elif isinstance(module, nn.Linear) and not _is_added(module, model):
            total += module.weight.nbytes
    return total


def _is_added(module: nn.Module, model: nn.Module) -> bool:
    """Whether a linear layer is not a base weight: the head, an adapter's, peft's LoRA matrices."""
    names = [n for n, m in model.named_modules() if m is module]
    return any(n.startswith("head") or ".adapter." in n or ".lora_" in n for n in names)


class PromptPoolClassifier(MeanPoolClassifier):
    """A MeanPoolClassifier for prompt tuning: peft puts the virtual tokens in front, so the encoder
    returns more positions than the mask has; the mean is taken over the real tokens only."""

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mean of the last layer's vectors over the real (unmasked) tokens, virtual ones dropped."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden[:, hidden.shape[1] - attention_mask.shape[1]:]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


# ----------------------------------------------------------------------------- building

def peft_config(spec: Method):
    """peft's config of a LoRA/DoRA/rsLoRA, IA3 or prompt-tuning Method."""
    from peft import IA3Config, PromptTuningConfig, TaskType

    task = TaskType.FEATURE_EXTRACTION
    if spec.kind == "lora":
        config = lora_config(spec.config())  # polarity-lora's: all-linear, dropout 0.1
        config.use_dora, config.use_rslora = spec.dora, spec.rslora
        return config
    if spec.kind == "ia3":
        # keys and values (attention), and the FFN output's input (its 1,536 inner activations): the
        # attention output projection is also called output.dense, so the FFN's is matched by position
        ffn = r".*\.layer\.\d+\.output\.dense"
        return IA3Config(task_type=task, target_modules=rf"(.*\.(key|value))|({ffn})", feedforward_modules=ffn)
    if spec.kind == "prompt":
        return PromptTuningConfig(task_type=task, num_virtual_tokens=spec.rank)
    raise ValueError(f"{spec.name} is not a peft method")


def build(method: str, seed: int):
    """(model, tokenizer): a MeanPoolClassifier whose trainable parameters are exactly the method's;
    new weights drawn with `seed` (lora-r8: the same as `finetune.build_classifier`'s polarity-lora)."""
    from peft import get_peft_model
    from transformers import AutoModel, AutoTokenizer

    spec = method_spec(method)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    torch.manual_seed(seed)  # the order of build_classifier: encoder, its new weights, then the head
    encoder = AutoModel.from_pretrained(MINILM, add_pooling_layer=False)
    if spec.kind in ("lora", "ia3", "prompt"):
        with _quiet_peft():
            encoder = get_peft_model(encoder, peft_config(spec))
    elif spec.kind == "adapter":
        encoder = add_adapters(encoder, spec.rank)
    elif spec.kind == "int8-lora":
        encoder = quantized_lora(encoder, spec.rank, spec.alpha, spec.config().lora_dropout)
    elif spec.kind in ("probe", "bitfit"):
        for name, p in encoder.named_parameters():
            p.requires_grad = spec.kind == "bitfit" and name.endswith("bias")
    config = spec.config()
    wrapper = PromptPoolClassifier if spec.kind == "prompt" else MeanPoolClassifier
    return wrapper(encoder, config.num_labels, config.dropout), tokenizer


def count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters; an int8 base weight counts as parameters too."""
    trainable, total = trainable_parameters(model)
    return trainable, total + sum(m.weight_int8.numel() for m in model.modules() if isinstance(m, Int8Linear))


# ----------------------------------------------------------------------------- measuring

def _nbytes(tensors) -> int:
    """Bytes of distinct storages among tensors."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def measure_memory(model: nn.Module) -> Iterator[dict]:
    """Measure training memory from the live objects, on any device, into the dict it yields:
    weights (every parameter and buffer), and at each optimizer step the gradients, the optimizer's
    state tensors and the activations autograd saved for backward (distinct storages, weights
    excluded); peak_bytes = weights + the largest step's sum. On CUDA also torch's
    max_memory_allocated; on Linux the rise of the process's peak resident memory (VmHWM, reset at the
    start: it also sees allocator caches, train_classifier's copy of the best epoch's weights and the
    validation passes, so it is noisier than peak_bytes, the figure of the table)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    figures = {"weight_bytes": _nbytes([*model.parameters(), *model.buffers()]), "gradient_bytes": 0,
               "optimizer_bytes": 0, "activation_bytes": 0, "peak_bytes": 0}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            ptr = t.untyped_storage().data_ptr()
            if ptr not in weights:
                saved[ptr] = t.untyped_storage().nbytes()
        return t

    def after_step(optimizer, args, kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = _nbytes(p.grad for p in params if p.grad is not None)
        state = _nbytes(v for s in optimizer.state.values() for v in s.values())
        acts = sum(saved.values())
        saved.clear()
        if grads + state + acts > figures["peak_bytes"] - figures["weight_bytes"]:
            figures.update(gradient_bytes=grads, optimizer_bytes=state, activation_bytes=acts,
                           peak_bytes=figures["weight_bytes"] + grads + state + acts)

    cuda = next(model.parameters()).is_cuda or torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_start = _reset_peak_rss()
    handle = register_optimizer_step_post_hook(after_step)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield figures
    finally:
        handle.remove()
    if cuda:
        figures["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    peak_rss = _status_bytes("VmHWM")
    figures["peak_rss_increase_bytes"] = None if rss_start is None or peak_rss is None else peak_rss - rss_start


def _status_bytes(field_name: str) -> int | None:
    """A field of /proc/self/status in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int | None:
    """Reset the process's peak resident memory to the current one (Linux); return the current one."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def save_trainable(model: nn.Module, folder: str | Path) -> list[Path]:
    """Save what a method trained: peft's adapter folder + head (`finetune.save_adapter`) for a peft
    method, else the trainable tensors as one safetensors file. Returns the files written."""
    from peft import PeftModel
    from safetensors.torch import save_file

    if isinstance(getattr(model, "encoder", None), PeftModel):
        with _quiet_peft():
            return save_adapter(model, folder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, folder / "trainable.safetensors")
    return [folder / "trainable.safetensors"]


# ----------------------------------------------------------------------------- running

def polarity_data(subset: int | None = None) -> dict[str, list[dict]]:
    """The encoded polarity splits (MiniLM's tokenizer, 64 tokens), the first `subset` of each."""
    from transformers import AutoTokenizer

    from companion.recipes import _polarity_data

    return _polarity_data(AutoTokenizer.from_pretrained(MINILM), MAX_LENGTH, subset)


def run_method(method: str, seed: int, data: dict[str, list[dict]], *, max_steps: int | None = None,
               device: torch.device | str | None = None) -> dict:
    """Train one method with one seed; its accuracies, parameters, time, memory and size on disk."""
    spec = method_spec(method)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model, _ = build(method, seed)
    model.to(device)
    config = spec.config()
    with _quiet_peft(), measure_memory(model) as memory:
        result = train_classifier(model, data["train"], data["validation"], config, seed, max_steps=max_steps,
                                  device=device, desc=f"{method} seed {seed}")
    with _quiet_peft():
        val, test = evaluate(model, data["validation"]), evaluate(model, data["test"])
    trainable, total = count(model)
    with tempfile.TemporaryDirectory() as tmp:
        files = save_trainable(model, tmp)
        disk = {p.name: p.stat().st_size for p in files}
    figures = {"method": method, "seed": seed, "test_accuracy": test.accuracy, "test_loss": round(test.loss, 6),
               "validation_accuracy": val.accuracy, "validation_loss": round(val.loss, 6),
               "trainable_parameters": trainable, "total_parameters": total,
               "steps": result.steps, "epochs": result.epochs, "best_epoch": result.best_epoch,
               "tokens": result.tokens, "train_seconds": round(result.seconds, 2),
               "peak_bytes": memory["peak_bytes"], "memory": memory, "linear_weight_bytes": linear_weight_bytes(model),
               "disk_bytes": sum(disk.values()), "disk_files": disk, "history": result.history,
               "test_probabilities": [round(float(p), 6) for p in test.probabilities[:, 1]]}
    if result.probe_accuracy is not None:
        figures["probe_train_accuracy"] = result.probe_accuracy
    return figures


@torch.no_grad()
def _pooled(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled vectors of a peft-wrapped encoder (eval mode) for one padded batch."""
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def adapter_workflow(tmpdir: str | Path, texts: Sequence[str] = ("a gripping , funny film .",
                                                                 "dull and far too long .")) -> dict:
    """peft's multi-adapter API on MiniLM, checked: two LoRA adapters saved (`save_pretrained`), loaded on
    one base (`PeftModel.from_pretrained` + `load_adapter`), switched (`set_adapter`), combined
    (`add_weighted_adapter`, "cat": exactly the weighted sum of their updates) and merged
    (`merge_and_unload`). The adapters are random (B drawn, not zero): the checks are about the API.
    peft 0.21 makes the combined adapter's dropout in training mode: `eval()` again after combining.
    Returns the measured differences (max absolute, over the pooled vectors or the weight update)."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    tmpdir = Path(tmpdir)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    spec = METHODS["lora-r8"]
    originals = {}
    with _quiet_peft():
        for i, name in enumerate(("a", "b")):
            torch.manual_seed(100 + i)
            model = get_peft_model(AutoModel.from_pretrained(MINILM, add_pooling_layer=False), peft_config(spec))
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.data.normal_(0, 0.05)
            originals[name] = _pooled(model.eval(), batch)
            model.save_pretrained(tmpdir / name, save_embedding_layers=False)
        base = AutoModel.from_pretrained(MINILM, add_pooling_layer=False).eval()
        plain = _pooled(base, batch)
        model = PeftModel.from_pretrained(base, tmpdir / "a", adapter_name="a")
        model.load_adapter(tmpdir / "b", adapter_name="b")
        model.eval()
        out = {}
        for name in ("a", "b"):
            model.set_adapter(name)
            out[name] = _pooled(model, batch)
        model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type="cat")
        model.set_adapter("ab")
        # the new adapter's dropout modules are made in training mode, whatever the model's mode was
        model.eval()
        out["ab"] = _pooled(model, batch)
        query = model.base_model.model.encoder.layer[0].attention.self.query
        with torch.no_grad():
            delta = {name: query.get_delta_weight(name) for name in ("a", "b", "ab")}
        merged = model.merge_and_unload()
        out["merged"] = _pooled(merged.eval(), batch)

    def diff(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x - y).abs().max())

    return {"adapters": sorted(p.name for p in tmpdir.iterdir() if p.is_dir()),
            "reloaded_a_vs_saved_a": diff(out["a"], originals["a"]),
            "reloaded_b_vs_saved_b": diff(out["b"], originals["b"]),
            "a_vs_b": diff(out["a"], out["b"]), "a_vs_base": diff(out["a"], plain),
            "ab_delta_vs_weighted_sum": diff(delta["ab"], 0.5 * delta["a"] + 0.5 * delta["b"]),
            "ab_vs_a": diff(out["ab"], out["a"]), "merged_vs_unmerged_ab": diff(out["merged"], out["ab"])}


def run_compare(out: str | Path, *, methods: Sequence[str] | None = None, seeds: Sequence[int] = (0, 1, 2),
                max_steps: int | None = None, subset: int | None = None) -> dict:
    """Run methods x seeds on polarity into `out`/results.json (per method: every run, mean ± std per
    metric); a seed finished by an interrupted call (its `.METHOD-seed-N.json`) is not run again."""
    import companion
    from companion.recipes import _finished_part, _save_part, is_shipped

    out = Path(out)
    if is_shipped(out):
        raise ValueError(f"{out} is inside the shipped checkpoints or results: write the run elsewhere")
    methods = tuple(methods if methods is not None else METHODS)
    for method in methods:
        method_spec(method)
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("no seeds to run")
    device = companion.pick_device()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = polarity_data(subset)
    results, resumed, parts = {}, [], []
    for method in methods:
        spec, runs = METHODS[method], []
        for seed in seeds:
            part = out / f".{method}-seed-{seed}.json"
            key = {"method": asdict(spec), "max_steps": max_steps, "subset": subset, "seed": seed}
            saved = _finished_part(part, out, key)
            if saved is None:
                saved = _save_part(part, key, run_method(method, seed, data, max_steps=max_steps, device=device), {})
            else:
                resumed.append([method, seed])
            runs.append(saved["run"])
            parts.append(part)
        first = runs[0]
        results[method] = {"spec": asdict(spec), "config": asdict(spec.config()), "lr_source": spec.lr_source,
                           "trainable_parameters": first["trainable_parameters"],
                           "total_parameters": first["total_parameters"],
                           "trainable_fraction": first["trainable_parameters"] / first["total_parameters"],
                           "linear_weight_bytes": first["linear_weight_bytes"],
                           "metrics": {m: seed_summary([r[m] for r in runs]) for m in METRICS}, "runs": runs}
    with tempfile.TemporaryDirectory() as tmp:
        workflow = adapter_workflow(tmp)
    figures = {"task": "Pang & Lee sentence polarity (companion.corpora.load_polarity)", "model": MINILM,
               "full_run": max_steps is None and subset is None and set(methods) == set(METHODS) and len(seeds) >= 3,
               "max_steps": max_steps, "subset": subset, "seeds": list(seeds),
               "split_sizes": {k: len(v) for k, v in data.items()},
               "memory_measured": " ".join(measure_memory.__doc__.split()),
               "disk_measured": "bytes of the files save_trainable writes (peft save_pretrained + head, or a "
                                "safetensors of the trainable tensors)",
               "methods": results, "table": table_rows({"methods": results}), "adapter_workflow": workflow,
               "resumed": resumed, "wall_seconds": round(time.perf_counter() - start, 1), **environment(device)}
    (out / "results.json").write_text(json.dumps(figures, indent=1) + "\n")
    if figures["full_run"]:  # a call on some methods keeps its parts: a later call on all resumes them
        for part in parts:
            part.unlink(missing_ok=True)
    return figures


def shipped_results(folder: str | Path | None = None) -> dict:
    """The results.json of the peft-compare recipe (default: the shipped copy in companion/results)."""
    from companion.provenance import verified_results
    from companion.recipes import RESULTS

    return verified_results(Path(folder) if folder is not None else RESULTS / "peft-compare", "peft-compare")


def table_rows(results: dict) -> list[dict]:
    """One row per method: trainable parameters, accuracy mean ± std, time, memory, size on disk."""
    rows = []
    for method, r in results["methods"].items():
        m = r["metrics"]
        rows.append({"method": method, "trainable_parameters": r["trainable_parameters"],
                     "trainable_fraction": r["trainable_fraction"],
                     "test_accuracy": m["test_accuracy"]["mean"], "test_accuracy_std": m["test_accuracy"]["std"],
                     "validation_accuracy": m["validation_accuracy"]["mean"],
                     "train_seconds": m["train_seconds"]["mean"], "peak_bytes": m["peak_bytes"]["mean"],
                     "disk_bytes": m["disk_bytes"]["mean"], "linear_weight_bytes": r["linear_weight_bytes"]})
    return rows


def headline(results: dict) -> str:
    """The comparison as a markdown table."""
    lines = ["| method | trainable | test accuracy | train s | peak MB | on disk MB | base linears MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in table_rows(results):
        lines.append(f"| {row['method']} | {row['trainable_parameters']:,} ({row['trainable_fraction']:.3%}) | "
                     f"{row['test_accuracy']:.4f} ± {row['test_accuracy_std']:.4f} | {row['train_seconds']:.0f} | "
                     f"{row['peak_bytes'] / 2**20:.1f} | {row['disk_bytes'] / 2**20:.3f} | "
                     f"{row['linear_weight_bytes'] / 2**20:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m companion.peft_compare [--out DIR] [--methods ...] [--seeds ...]."""
    import companion

    parser = argparse.ArgumentParser(prog="python -m companion.peft_compare", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "peft-compare")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, help="stop each run after N steps (a quick check)")
    parser.add_argument("--subset", type=int, help="use the first N sentences of each split")
    args = parser.parse_args(argv)
    companion.setup()
    results = run_compare(args.out, methods=args.methods, seeds=args.seeds, max_steps=args.max_steps,
                          subset=args.subset)
    print(headline(results))
    print(f"wrote {(args.out / 'results.json').resolve()} in {results['wall_seconds']:.0f} s ({results['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
