"""Adversarial training and attacks on text classifiers.

Training, after the clean `loss.backward()` and before `optimizer.step()`: `fgm_step` (Miyato et
al., 2017) adds r = eps * g / ||g||_2 to the word-embedding matrix, g its gradient from the clean
backward (or, for frozen embeddings as under LoRA, from one more backward) and ||g||_2 the L2
norm of the *whole* matrix (as the common implementation does: only the batch's token rows have
g != 0), backpropagates the loss there (the gradients add to .grad)
and restores the weights bit for bit. `pgd_step` (Madry et al., 2018; on embeddings as Zhu et
al., 2020, FreeLB) takes K such steps of size alpha, each projected onto the L2 ball of radius
eps around the original matrix, and backpropagates the loss at the last point only.

`embedding_attack` evaluates: L2 PGD on a batch's input embeddings (the word-embedding layer's
output, moved by a forward hook), one ball of radius eps per sentence, no random start;
`embedding_attack_data` runs it over a data set.
`attack_text` / `attack_success_rate` attack raw texts character by character (Gao et al., 2018,
DeepWordBug; Pruthi et al., 2019) through any `predict_proba(texts) -> (n, classes)`: words
(split on whitespace, rejoined with single spaces) ranked by leave-one-out importance are edited
one at a time (swap, delete, insert or keyboard-neighbour substitute: whichever lowers the true
class's probability most) until the prediction flips or `budget` words are edited; seeded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from companion.finetune import classifier_loss  # the loss FGM and PGD perturb by default (re-exported)

LossFn = Callable[[nn.Module, dict], torch.Tensor]
KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def input_embeddings(model: nn.Module) -> nn.Module:
    """The word-embedding layer of a model, or of a MeanPoolClassifier's encoder."""
    for owner in (model, getattr(model, "encoder", None)):
        get = getattr(owner, "get_input_embeddings", None)
        if callable(get) and get() is not None:
            return get()
    raise TypeError(f"{type(model).__name__} has no get_input_embeddings() (nor has its .encoder)")


def _check(eps: float, steps: int = 1, alpha: float = 1.0) -> None:
    if not eps >= 0:
        raise ValueError(f"eps is the radius of the perturbation, >= 0; got {eps!r}")
    if not (isinstance(steps, (int, np.integer)) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not alpha > 0:
        raise ValueError(f"alpha is the step size, > 0; got {alpha!r}")


def fgm_perturbation(grad: torch.Tensor, eps: float) -> torch.Tensor:
    """FGM's r = eps * g / ||g||_2, the norm over the whole tensor: ||r||_2 = eps (0 if g is 0)."""
    _check(eps)
    norm = grad.float().norm()
    return eps * grad / norm if torch.isfinite(norm) and norm > 0 else torch.zeros_like(grad)


def _ascend(model: nn.Module, batch: dict, eps: float, alpha: float, steps: int, loss_fn: LossFn) -> float:
    """PGD on the embedding matrix from its clean gradient; backward the loss at the last point."""
    weight = input_embeddings(model).weight
    frozen = not weight.requires_grad  # e.g. under LoRA: g costs one more forward and backward
    if not frozen and weight.grad is None:
        raise ValueError("the embedding matrix has no .grad: call loss.backward() on the clean loss first")
    original = weight.detach().clone()
    try:
        weight.requires_grad_(True)
        grad = torch.autograd.grad(loss_fn(model, batch), weight)[0] if frozen else weight.grad.clone()
        delta = torch.zeros_like(original)
        for step in range(steps):
            delta = delta + fgm_perturbation(grad, alpha)
            norm = delta.float().norm()
            delta = delta * (eps / norm) if norm > eps else delta  # back onto the ball of radius eps
            with torch.no_grad():
                weight.copy_(original + delta)
            loss = loss_fn(model, batch)
            if step < steps - 1:  # intermediate points: the embedding gradient only, .grad untouched
                (grad,) = torch.autograd.grad(loss, weight)
        loss.backward()
    finally:  # also on error: the weights bit for bit, a frozen matrix frozen again
        with torch.no_grad():
            weight.copy_(original)
        if frozen:
            weight.requires_grad_(False)
            weight.grad = None
    return float(loss.detach())


def fgm_step(model: nn.Module, batch: dict, eps: float = 1.0, loss_fn: LossFn = classifier_loss) -> float:
    """After the clean backward: add the gradients of the loss at embeddings + r to .grad, restore;
    returns that adversarial loss (one PGD step of size eps)."""
    _check(eps)
    return _ascend(model, batch, eps, eps, 1, loss_fn)


def pgd_step(model: nn.Module, batch: dict, eps: float = 1.0, alpha: float = 0.3, steps: int = 3,
             loss_fn: LossFn = classifier_loss) -> float:
    """After the clean backward: `steps` ascent steps on the embedding matrix inside the eps-ball,
    add the gradients of the loss at the last point to .grad, restore; returns that loss."""
    _check(eps, steps, alpha)
    return _ascend(model, batch, eps, alpha, steps, loss_fn)


@dataclass(frozen=True)
class EmbeddingAttack:
    """Predictions of a batch before and after a PGD attack on its input embeddings."""

    labels: np.ndarray
    clean: np.ndarray
    attacked: np.ndarray
    norms: np.ndarray  # ||delta||_2 of each sentence's perturbation (<= eps)

    @property
    def clean_accuracy(self) -> float:
        """Accuracy without the attack."""
        return float((self.clean == self.labels).mean())

    @property
    def accuracy(self) -> float:
        """Accuracy under the attack."""
        return float((self.attacked == self.labels).mean())


def embedding_attack(model: nn.Module, batch: dict, eps: float = 1.0, steps: int = 5,
                     alpha: float = 0.5, loss_fn: LossFn = classifier_loss) -> EmbeddingAttack:
    """L2 PGD on the input embeddings, per sentence, in eval mode; model and .grad are left alone."""
    _check(eps, steps, alpha)
    from companion.finetune import classifier_logits

    layer, mask = input_embeddings(model), batch["attention_mask"]
    delta: torch.Tensor | None = None  # (batch, tokens, hidden), zero on padding

    def add_delta(module, args, output):
        return output if delta is None else output + delta.to(output.dtype)

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(add_delta)
    try:
        with torch.no_grad():
            clean = classifier_logits(model, batch).argmax(-1)
            shape = (*batch["input_ids"].shape, layer.weight.shape[1])
        keep = mask.unsqueeze(-1).to(torch.float32)
        delta = torch.zeros(shape, device=layer.weight.device)
        for _ in range(steps):
            delta.requires_grad_(True)
            # a sentence's delta moves its own loss term only; normalising per sentence removes the 1/n
            (grad,) = torch.autograd.grad(loss_fn(model, batch), delta)
            grad = grad * keep
            norms = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1)
            delta = delta.detach() + alpha * grad / norms
            scale = (eps / delta.flatten(1).norm(dim=1).clamp(min=1e-12)).clamp(max=1.0)
            delta = delta * scale.view(-1, 1, 1)
        delta = delta.detach()
        with torch.no_grad():
            attacked = classifier_logits(model, batch).argmax(-1)
    finally:
        handle.remove()
        model.train(was_training)
    return EmbeddingAttack(labels=batch["labels"].cpu().numpy(), clean=clean.cpu().numpy(),
                           attacked=attacked.cpu().numpy(),
                           norms=delta.flatten(1).norm(dim=1).cpu().numpy())


def embedding_attack_data(model: nn.Module, data: Sequence[dict], eps: float = 1.0, steps: int = 5,
                          alpha: float = 0.5, batch_size: int = 32) -> EmbeddingAttack:
    """`embedding_attack` on encoded sentences (finetune.encode) in length-sorted batches (less
    padding); the arrays in the data's order."""
    from companion.finetune import collate, pad_id

    if len(data) == 0:
        raise ValueError("no sentences to attack")
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    parts, device = [], next(model.parameters()).device
    for i in range(0, len(order), batch_size):
        batch = collate([data[j] for j in order[i:i + batch_size]], pad_id(model))
        parts.append(embedding_attack(model, {k: v.to(device) for k, v in batch.items()},
                                      eps, steps, alpha))
    back = np.argsort(order)
    return EmbeddingAttack(*(np.concatenate([getattr(p, f) for p in parts])[back]
                             for f in ("labels", "clean", "attacked", "norms")))


# ----------------------------------------------------------------------------- character attack

def _neighbours() -> dict[str, str]:
    """Keyboard neighbours on a staggered QWERTY layout (each row half a key right of the one above)."""
    where = {c: (r, i) for r, row in enumerate(KEYBOARD) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in where.items():
        near = [(r, i - 1), (r, i + 1), (r - 1, i), (r - 1, i + 1), (r + 1, i - 1), (r + 1, i)]
        out[c] = "".join(KEYBOARD[a][b] for a, b in near if 0 <= a < 3 and 0 <= b < len(KEYBOARD[a]))
    return out


NEIGHBOURS = _neighbours()


def char_edits(word: str, rng: np.random.Generator) -> list[str]:
    """One edit of each kind (swap adjacent, delete, insert, keyboard substitute) at a random letter;
    distinct, different from the word, none empty; [] for a word without letters."""
    letters = [i for i, c in enumerate(word) if c.isalpha()]
    if not letters:
        return []
    i = int(rng.choice(letters))
    out = []
    if len(word) > 1:
        j = i + 1 if i + 1 < len(word) else i - 1
        a, b = sorted((i, j))
        out.append(word[:a] + word[b] + word[a] + word[b + 1:])
        out.append(word[:i] + word[i + 1:])
    out.append(word[:i] + chr(ord("a") + int(rng.integers(26))) + word[i:])
    near = NEIGHBOURS.get(word[i].lower(), "")
    if near:
        sub = near[int(rng.integers(len(near)))]
        out.append(word[:i] + (sub.upper() if word[i].isupper() else sub) + word[i + 1:])
    return [w for w in dict.fromkeys(out) if w and w != word]


@dataclass(frozen=True)
class TextAttack:
    """One sentence under the character attack: was it correct, did the attack flip it, and how."""

    text: str
    label: int
    correct: bool  # originally classified correctly (otherwise it is not attacked)
    success: bool
    adversarial: str
    edits: tuple[tuple[int, str, str], ...]  # (word position, original word, edited word)
    queries: int  # texts given to predict_proba


def classifier_proba(model: nn.Module, tokenizer, max_length: int = 64) -> Callable[[list[str]], np.ndarray]:
    """predict_proba(texts) of a fine-tuned classifier and its tokenizer (finetune.evaluate, eval mode)."""
    from companion.finetune import encode, evaluate

    def predict_proba(texts: list[str]) -> np.ndarray:
        return evaluate(model, encode(tokenizer, texts, [0] * len(texts), max_length)).probabilities
    return predict_proba


def _proba(predict_proba: Callable, texts: list[str]) -> np.ndarray:
    p = np.asarray(predict_proba(texts))
    if p.ndim != 2 or p.shape[0] != len(texts):
        raise ValueError(f"predict_proba must return an (n, classes) array; got shape {p.shape} "
                         f"for n={len(texts)} texts")
    return p


def attack_text(text: str, label: int, predict_proba: Callable[[list[str]], np.ndarray],
                budget: int = 3, seed: int | Sequence[int] = 0) -> TextAttack:
    """Greedy leave-one-out-ranked character attack on one text (see the module docstring)."""
    if not (isinstance(budget, (int, np.integer)) and budget >= 1):
        raise ValueError(f"budget is the number of words one may edit, >= 1; got {budget!r}")
    words, label = text.split(), int(label)
    if not words:
        raise ValueError("cannot attack an empty text")
    rng = np.random.default_rng(seed)
    p = _proba(predict_proba, [" ".join(words)])[0]
    queries, correct = 1, int(p.argmax()) == label
    if not correct:
        return TextAttack(text, label, False, False, text, (), queries)
    drops = [" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
    importance = p[label] - _proba(predict_proba, drops)[:, label]
    queries += len(words)
    edits: list[tuple[int, str, str]] = []
    best, success = p[label], False
    for i in sorted(range(len(words)), key=lambda k: -importance[k]):  # stable: ties by position
        candidates = char_edits(words[i], rng)
        if not candidates:
            continue
        probs = _proba(predict_proba, [" ".join(words[:i] + [c] + words[i + 1:]) for c in candidates])
        queries += len(candidates)
        k = int(probs[:, label].argmin())
        if probs[k, label] >= best:
            continue  # no edit of this word helps: it costs no budget
        edits.append((i, words[i], candidates[k]))
        words[i], best = candidates[k], probs[k, label]
        if int(probs[k].argmax()) != label:
            success = True
            break
        if len(edits) == budget:
            break
    return TextAttack(text, label, True, success, " ".join(words), tuple(edits), queries)


@dataclass(frozen=True)
class AttackSummary:
    """A data set under the character attack."""

    n: int
    clean_accuracy: float
    accuracy: float  # under attack: correct and not flipped, over all n
    success_rate: float  # flipped / originally correct (nan when none was correct)
    results: tuple[TextAttack, ...]


def attack_success_rate(texts: Sequence[str], labels: Sequence[int], predict_proba: Callable,
                        budget: int = 3, seed: int = 0) -> AttackSummary:
    """Attack every text; the success rate counts only the originally correct ones (example i uses
    the seed (seed, i)); accuracy under attack is over all texts."""
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("no texts to attack")
    results = tuple(attack_text(t, y, predict_proba, budget, (seed, i))
                    for i, (t, y) in enumerate(zip(texts, labels)))
    correct = sum(r.correct for r in results)
    flipped = sum(r.success for r in results)
    return AttackSummary(n=len(results), clean_accuracy=correct / len(results),
                         accuracy=(correct - flipped) / len(results),
                         success_rate=flipped / correct if correct else float("nan"), results=results)
