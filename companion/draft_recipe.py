"""A draft for speculative decoding, distilled from SmolLM2 (the `draft` recipe).

Sequence-level distillation (Kim & Rush, 2016): SmolLM2-135M-Instruct answers the training
questions of the ChatterBot corpus greedily, and a small decoder learns to predict those answers
token by token. The draft shares everything it can with its target: the first `n_layers` of its
30 blocks to start from (`speculative.layer_draft`), the tokenizer, the frozen embeddings, and
an output layer made of the embedding rows of a fixed token subset (`SubsetHead`: the
`top_tokens` lowest ids, which byte-level BPE merged first and so are the most frequent, and
every token of the teacher's training answers). The subset makes each draft step cheap: the full
output layer (49,152 x 576) costs more than two blocks on a CPU.

Since the draft is trained to copy the target's greedy choices, the share of answer tokens on
which it agrees with the target (`agreement`, teacher-forced) is what speculative decoding's
acceptance rate depends on. The recipe measures it on the validation answers after each epoch;
then, once per seed, the acceptance and tokens per target pass of
`speculative.speculative_generate` on test questions; and, for the first seed, its wall-clock
ratio to plain greedy decoding and that of `transformers`' assisted generation with the same draft.

>>> draft = load_draft(target, recipes.RESULTS / "draft" / "draft-seed-0.safetensors")
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

KEY = "draft"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class DraftConfig:
    """The recipe's settings (fixed in advance: k = 3 is not chosen on test)."""

    n_layers: int = 2
    top_tokens: int = 8192
    max_new_tokens: int = 48
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 16
    warmup_steps: int = 20
    k: int = 3
    test_questions: int = 20


class SubsetHead(nn.Module):
    """An output layer over the tokens `ids` only (rows of `weight`); the others get -inf."""

    def __init__(self, weight: torch.Tensor, ids: torch.Tensor) -> None:
        super().__init__()
        self.vocab_size = weight.shape[0]
        self.register_buffer("ids", ids.clone())
        self.register_buffer("weight", weight.detach()[ids].clone())

    def small(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the subset only, in the order of `ids`."""
        return hidden @ self.weight.T

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.new_full((*hidden.shape[:-1], self.vocab_size), float("-inf"))
        out[..., self.ids] = self.small(hidden)
        return out


def chat_ids(tokenizer, question: str) -> list[int]:
    """The token ids of `question` as one user turn, ready for the assistant's answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         add_generation_prompt=True, return_dict=True)["input_ids"]


@torch.no_grad()
def teacher_answers(model, tokenizer, questions: Sequence[str], max_new_tokens: int,
                    batch_size: int = 32, desc: str = "teacher answers") -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy answer ids ending with eos if it came) for each question, in batches
    padded on the left."""
    from companion.book import progress

    eos, pairs = tokenizer.eos_token_id, []
    for i in progress(range(0, len(questions), batch_size), desc=desc):
        prompts = [chat_ids(tokenizer, q) for q in questions[i:i + batch_size]]
        width = max(map(len, prompts))
        ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos, pad_token_id=eos)
        for p, row in zip(prompts, out[:, width:].tolist()):
            pairs.append((p, row[:row.index(eos) + 1] if eos in row else row))
    return pairs


def draft_vocabulary(answers: Sequence[tuple[list[int], list[int]]], top_tokens: int, eos: int) -> list[int]:
    """The subset the draft can propose: ids below `top_tokens`, eos and every answer token."""
    return sorted(set(range(top_tokens)) | {eos} | {t for _, a in answers for t in a})


def build_draft(target, n_layers: int, vocabulary: Sequence[int]):
    """The first `n_layers` blocks of `target` with a `SubsetHead` over `vocabulary`; only the
    blocks and the final norm are trainable."""
    from companion.speculative import layer_draft

    draft = layer_draft(target, n_layers)
    draft.config.tie_word_embeddings = False
    draft.lm_head = SubsetHead(target.lm_head.weight, torch.tensor(sorted(vocabulary)))
    for name, p in draft.named_parameters():
        p.requires_grad_(name.startswith(("model.layers.", "model.norm.")))
    return draft


def _batch(pairs: Sequence[tuple[list[int], list[int]]], pad: int):
    """input_ids, attention_mask (right padding) and labels (-100 except on answer tokens)."""
    full = [p + a for p, a in pairs]
    width = max(map(len, full))
    ids = torch.tensor([f + [pad] * (width - len(f)) for f in full])
    mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in full])
    labels = torch.tensor([[-100] * len(p) + a + [-100] * (width - len(p) - len(a)) for p, a in pairs])
    return ids, mask, labels


def _loss_and_hits(draft, pairs, pad: int) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy over the subset on the answer tokens, argmax hits and the token count."""
    head = draft.lm_head
    index = torch.full((head.vocab_size,), -100, dtype=torch.long)
    index[head.ids] = torch.arange(len(head.ids))
    ids, mask, labels = _batch(pairs, pad)
    hidden = draft.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    target = torch.where(target >= 0, index[target.clamp(min=0)], target)  # -100: not in the subset
    logits = head.small(hidden)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
    answer = labels[:, 1:] >= 0
    hits = int(((logits.argmax(-1) == target) & answer).sum())
    return loss, hits, int(answer.sum())


@torch.no_grad()
def agreement(draft, pairs: Sequence[tuple[list[int], list[int]]], pad: int, batch_size: int = 32) -> float:
    """Share of the answer tokens the draft predicts as the teacher chose them (teacher-forced)."""
    draft.eval()
    hits = total = 0
    for i in range(0, len(pairs), batch_size):
        _, h, n = _loss_and_hits(draft, pairs[i:i + batch_size], pad)
        hits, total = hits + h, total + n
    return hits / total


def train_draft(draft, train: Sequence[tuple[list[int], list[int]]],
                validation: Sequence[tuple[list[int], list[int]]], pad: int, *,
                config: DraftConfig = DraftConfig(), seed: int = 0) -> dict:
    """AdamW with warmup and linear decay on the teacher's answers; the validation agreement after
    each epoch. Returns steps, seconds and the history (the last epoch's weights are kept)."""
    from companion.book import progress

    params = [p for p in draft.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    steps = config.epochs * math.ceil(len(train) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) * max(0.0, 1 - s / steps))
    generator = torch.Generator().manual_seed(seed)
    history = [{"epoch": 0, "val_agreement": round(agreement(draft, validation, pad), 4)}]
    start, step = time.perf_counter(), 0
    bar = progress(total=steps, desc=f"draft seed {seed}")
    for epoch in range(1, config.epochs + 1):
        draft.train()
        order, losses = torch.randperm(len(train), generator=generator).tolist(), []
        for i in range(0, len(order), config.batch_size):
            loss, _, _ = _loss_and_hits(draft, [train[j] for j in order[i:i + config.batch_size]], pad)
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
            bar.update()
        history.append({"epoch": epoch, "train_loss": round(sum(losses) / len(losses), 4),
                        "val_agreement": round(agreement(draft, validation, pad), 4)})
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", agree=f"{history[-1]['val_agreement']:.3f}")
    bar.close()
    draft.eval()
    return {"steps": step, "seconds": round(time.perf_counter() - start, 1), "history": history}


def round_to_bfloat16(draft) -> None:
    """Round the trainable weights to bfloat16 (as they are shipped) and back, in place."""
    with torch.no_grad():
        for p in draft.parameters():
            if p.requires_grad:
                p.copy_(p.to(torch.bfloat16).float())


def save_draft(draft, path: Path) -> None:
    """The trained blocks and norm in bfloat16, and the subset's token ids, as safetensors."""
    from safetensors.torch import save_file

    tensors = {f"model.{name}": p.detach().to(torch.bfloat16).contiguous()
               for name, p in draft.model.named_parameters() if p.requires_grad}
    tensors["lm_head.ids"] = draft.lm_head.ids.contiguous()
    save_file(tensors, str(path), metadata={"n_layers": str(len(draft.model.layers)), "target": MODEL})


def load_draft(target, path: Path):
    """A draft saved by `save_draft`, on `target`'s embeddings, in float32 and eval mode."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no draft at {path}: run python -m companion.recipes {KEY}")
    with safe_open(str(path), "pt") as f:
        n_layers = int(f.metadata()["n_layers"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    draft = build_draft(target, n_layers, tensors.pop("lm_head.ids").tolist())
    state = draft.state_dict()
    if set(tensors) - set(state) or any(state[k].shape != v.shape for k, v in tensors.items()):
        raise ValueError(f"{path} does not fit a {n_layers}-layer draft of this target")
    draft.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    for p in draft.parameters():
        p.requires_grad_(False)
    return draft.eval()


@torch.no_grad()
def speculative_figures(target, draft, prompts: Sequence[list[int]], *, k: int, max_new_tokens: int,
                        eos: int, greedy: Sequence[list[int]] | None = None, assisted: bool = False) -> dict:
    """Acceptance and tokens per target pass of ours over `prompts`, each output checked against
    greedy decoding (a ValueError if one differs). Without `greedy` (the outputs of plain greedy
    `generate`), plain decoding runs and is timed side by side with ours (and with `assisted`,
    `transformers`' assisted generation), the order alternating; the outputs come back as "greedy"."""
    from companion.speculative import speculative_generate

    ways = ["ours"] + ([] if greedy is not None else ["plain"] + (["assisted"] if assisted else []))
    spent = dict.fromkeys(ways, 0.0)
    drafted = accepted = calls = new = 0
    outputs, per_prompt = [], []
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([prompt])
        kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                      do_sample=False, eos_token_id=eos, pad_token_id=eos)
        outs = {}
        for way in ways[i % len(ways):] + ways[:i % len(ways)]:
            start = time.perf_counter()
            if way == "plain":
                outs[way] = target.generate(ids, **kwargs)[0].tolist()
            elif way == "ours":
                out, stats = speculative_generate(target, draft, ids, max_new_tokens, k=k, eos_token_id=eos)
                outs[way] = out[0].tolist()
            else:
                outs[way] = target.generate(ids, assistant_model=draft, num_assistant_tokens=k,
                                            num_assistant_tokens_schedule="constant", **kwargs)[0].tolist()
            spent[way] += time.perf_counter() - start
        reference = greedy[i] if greedy is not None else outs["plain"]
        if any(out != reference for out in outs.values()):
            raise ValueError(f"prompt {i}: a speculative output differs from greedy decoding")
        outputs.append(reference)
        per_prompt.append([stats.drafted, stats.accepted, stats.target_calls, stats.new_tokens])
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
        calls, new = calls + stats.target_calls, new + stats.new_tokens
    figures = {"prompts": len(prompts), "new_tokens": new, "acceptance": round(accepted / drafted, 4),
               "tokens_per_target_call": round(new / calls, 4),
               "per_prompt": {"columns": ["drafted", "accepted", "target_calls", "new_tokens"],
                              "rows": per_prompt}}
    if greedy is None:
        figures |= {"seconds": {w: round(s, 2) for w, s in spent.items()},
                    "speedup": round(spent["plain"] / spent["ours"], 3), "greedy": outputs}
        if assisted:
            figures["assisted_speedup"] = round(spent["plain"] / spent["assisted"], 3)
    return figures


def run_recipe(out: Path, *, seeds: Sequence[int] = (0, 1, 2), subset: int | None = None,
               config: DraftConfig = DraftConfig()) -> dict:
    """Distil SmolLM2 into `config.n_layers`-layer drafts, one per seed (the seed orders the
    batches). Each is rounded to bfloat16 as shipped, then scored on the test answers
    (agreement) and by speculative decoding of the first `config.test_questions` test questions
    (the first seed also against assisted generation). Writes results.json and the first seed's
    draft into `out`; `subset` uses that many questions per split (a quick check)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from companion.corpora import load_chatterbot
    from companion.provenance import check_run_arguments, environment, seed_summary
    from companion.recipes import run_folder
    from companion.resources import sha256

    seeds = check_run_arguments(seeds, None, subset)
    out = run_folder(out)
    wall = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    target = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    eos = tokenizer.eos_token_id
    questions = {split: [turns[0] for turns in rows["turns"]][:subset]
                 for split, rows in load_chatterbot("english").items()}
    answers = {split: teacher_answers(target, tokenizer, qs, config.max_new_tokens, desc=f"teacher: {split}")
               for split, qs in questions.items()}
    vocabulary = draft_vocabulary(answers["train"], config.top_tokens, eos)
    covered = set(vocabulary)
    coverage = {split: sum(t in covered for _, a in pairs for t in a) / sum(len(a) for _, a in pairs)
                for split, pairs in answers.items()}
    prompts = [p for p, _ in answers["test"][:config.test_questions]]
    runs, artifacts, greedy = [], {}, None
    for seed in seeds:
        draft = build_draft(target, config.n_layers, vocabulary)
        run = train_draft(draft, answers["train"], answers["validation"], eos, config=config, seed=seed)
        round_to_bfloat16(draft)
        figures = speculative_figures(target, draft, prompts, k=config.k,
                                      max_new_tokens=config.max_new_tokens, eos=eos, greedy=greedy,
                                      assisted=True)  # timed on the first seed only
        greedy = figures.pop("greedy", greedy)
        run |= {"seed": seed, "val_agreement": round(agreement(draft, answers["validation"], eos), 4),
                "test_agreement": round(agreement(draft, answers["test"], eos), 4), "speculative": figures}
        runs.append(run)
        print(f"seed {seed}: test agreement {run['test_agreement']:.3f}, "
              f"{run['speculative']['tokens_per_target_call']:.2f} tokens per target pass", flush=True)
        if seed == seeds[0]:
            name = f"draft-seed-{seed}.safetensors"
            save_draft(draft, out / name)
            artifacts[name] = sha256(out / name)
    untrained = build_draft(target, config.n_layers, vocabulary)
    baseline = {"test_agreement": round(agreement(untrained, answers["test"], eos), 4),
                "speculative": speculative_figures(target, untrained, prompts, k=config.k,
                                                   max_new_tokens=config.max_new_tokens, eos=eos,
                                                   greedy=greedy)}
    summary = {key: seed_summary([r[key] for r in runs]) for key in ("val_agreement", "test_agreement")}
    for key in ("acceptance", "tokens_per_target_call"):
        summary[key] = seed_summary([r["speculative"][key] for r in runs])
    results = {
        "key": KEY, "target": MODEL, "full_run": subset is None, "subset": subset, "seeds": seeds,
        "config": asdict(config),
        "data": "greedy answers of the target (at most max_new_tokens) to the first turns of the ChatterBot "
                "corpus (companion.corpora.load_chatterbot), each split answered separately",
        "answer_tokens": {s: sum(len(a) for _, a in pairs) for s, pairs in answers.items()},
        "vocabulary": len(vocabulary), "vocabulary_coverage": {s: round(c, 4) for s, c in coverage.items()},
        "trainable_parameters": sum(p.numel() for p in untrained.parameters() if p.requires_grad),
        "protocol": "settings fixed in advance (k = 3); every run trains all epochs; the weights are "
                    "rounded to bfloat16 as shipped before scoring; test scored once per seed; wall-clock "
                    "time measured on the first seed only (plain greedy, ours and assisted generation "
                    "side by side)",
        "untrained": baseline, "summary": summary, "runs": runs,
        "wall_seconds": round(time.perf_counter() - wall, 1), "artifacts": artifacts, **environment(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def headline(results: dict) -> str:
    """The untrained and the distilled drafts: agreement, acceptance, tokens per pass, speed."""
    s, base = results["summary"], results["untrained"]

    def pm(key: str) -> str:
        return f"{s[key]['mean']:.3f} ± {s[key]['std']:.3f}"

    timed = results["runs"][0]["speculative"]
    return (f"untrained {results['config']['n_layers']}-layer draft: "
            f"test agreement {base['test_agreement']:.3f}, "
            f"{base['speculative']['tokens_per_target_call']:.2f} tokens per target pass\n"
            f"distilled ({len(results['seeds'])} seeds): test agreement {pm('test_agreement')}, acceptance "
            f"{pm('acceptance')}, {pm('tokens_per_target_call')} tokens per target pass\n"
            f"time against plain greedy (seed {results['seeds'][0]}): ours {timed['speedup']:.2f}x, "
            f"transformers' assisted generation {timed['assisted_speedup']:.2f}x")
