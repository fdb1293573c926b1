"""Instruction tuning: chat-template examples with assistant-only labels, packing, an instruction mixture,
and scores for generated text.

A conversation is a list of messages ``{"role": "user" | "assistant" | "system", "content": ...}``.
`chat_example` renders it with the tokenizer's own chat template and labels only the assistant
turns: each turn's content and the end-of-turn token that follows it keep their ids as labels,
everything else (system prompt, user turns, the ``<|im_start|>assistant`` headers) is -100. The
spans are found by rendering growing prefixes of the conversation, so any template works, with
or without ``{% generation %}`` markers::

    example = chat_example(tokenizer, [{"role": "user", "content": "Hi"},
                                       {"role": "assistant", "content": "Hello!"}])

`pack` puts whole examples side by side into rows of at most `block_size` tokens, with position ids
that restart at 0 for each example. Given ``position_ids`` and no attention mask, a `transformers`
decoder called with ``use_cache=False`` attends only within each example (it reads the restarts as
boundaries; with a cache it would not), so a packed row
gives every example the same loss as running it alone, without padding.

`instruction_mixture` builds the book's mixture of five tasks from offline corpora; `score` grades a
generated answer for its task (exact match, entity F1 from parsed JSON, segmentation F1, tag
accuracy, chrF), counting malformed output as a failure, never raising.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from companion.metrics import IGNORE_INDEX

ROLES = ("system", "user", "assistant")
TASKS = ("sentiment", "entities", "segmentation", "pos", "chat")

# A plain template for a model that has none (the book's byte-level GPT): the same idea as ChatML.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def _check_messages(messages: Sequence[dict]) -> None:
    """A clear error for a conversation the chat template cannot render or that has nothing to learn."""
    if not messages:
        raise ValueError("the conversation is empty: give a list of {'role': ..., 'content': ...} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) < {"role", "content"}:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has role {m['role']!r}; roles are {ROLES}")
        if not isinstance(m["content"], str):
            raise TypeError(f"message {i} content must be a string, got {type(m['content']).__name__}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("the conversation has no assistant turn: there is nothing to learn from")


def _render(tokenizer, messages: Sequence[dict], *, generation_prompt: bool) -> list[int]:
    """Token ids of the chat template applied to `messages`."""
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=generation_prompt,
                                        return_dict=True)
    return list(out["input_ids"])


def chat_example(tokenizer, messages: Sequence[dict], *, max_length: int | None = None,
                 end_token_id: int | None = None) -> dict[str, torch.Tensor]:
    """`input_ids` of a rendered conversation and `labels` that keep only the assistant turns.

    Each assistant turn is labelled from its first content token through `end_token_id` (the
    tokenizer's eos token by default: ``<|im_end|>`` for ChatML); the template's text after it
    (a line break) stays -100. Raises if the template does not render a conversation's prefix
    as a prefix of the whole (the spans would be wrong) or if the result exceeds `max_length`.
    """
    _check_messages(messages)
    end = tokenizer.eos_token_id if end_token_id is None else end_token_id
    ids = _render(tokenizer, messages, generation_prompt=False)
    labels = [IGNORE_INDEX] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _render(tokenizer, messages[:i], generation_prompt=True) if i else []
        stop = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if ids[: len(start)] != start or ids[: len(stop)] != stop:
            raise ValueError("the chat template does not render a conversation's beginning as a prefix of "
                             "the whole conversation, so the assistant spans cannot be found this way")
        span = list(range(len(start), len(stop)))
        ends = [j for j in span if ids[j] == end]
        if not ends:
            raise ValueError(f"assistant turn {i} does not end with token {end}: pass the template's "
                             "end-of-turn id as end_token_id")
        for j in range(len(start), ends[-1] + 1):
            labels[j] = ids[j]
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"the conversation has {len(ids)} tokens, more than max_length={max_length}")
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def pack(examples: Sequence[dict], block_size: int) -> list[dict[str, torch.Tensor]]:
    """Whole examples placed into rows of at most `block_size` tokens (first fit, longest first).

    Each row holds `input_ids`, `labels` and `position_ids` (restarting at 0 for each example).
    An example is never cut: one longer than `block_size` raises.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if not examples:
        raise ValueError("nothing to pack: the list of examples is empty")
    lengths = [len(e["input_ids"]) for e in examples]
    if max(lengths) > block_size:
        raise ValueError(f"an example has {max(lengths)} tokens, more than block_size={block_size}: "
                         "raise block_size or drop the long examples first")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(examples)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(block_size)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    packed = []
    for members in rows:
        packed.append({
            "input_ids": torch.cat([torch.as_tensor(examples[i]["input_ids"]) for i in members]),
            "labels": torch.cat([torch.as_tensor(examples[i]["labels"]) for i in members]),
            "position_ids": torch.cat([torch.arange(lengths[i]) for i in members]),
        })
    return packed


def collate_packed(rows: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad packed rows into a batch; padding is one more 'example' with labels -100 (no attention mask)."""
    if not rows:
        raise ValueError("cannot collate an empty list of rows")
    longest = max(len(r["input_ids"]) for r in rows)
    batch = {"input_ids": torch.full((len(rows), longest), pad_id, dtype=torch.long),
             "labels": torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long),
             "position_ids": torch.zeros(len(rows), longest, dtype=torch.long)}
    for b, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][b, :n] = r["input_ids"]
        batch["labels"][b, :n] = r["labels"]
        batch["position_ids"][b, :n] = r["position_ids"]
        batch["position_ids"][b, n:] = torch.arange(longest - n)
    return batch


# ----------------------------------------------------------------------------- the mixture

SENTIMENT_PROMPT = ("Is this movie review positive or negative? Answer with one word.\n\n{text}")
ENTITY_PROMPT = ("List the named entities in this tweet as JSON: an object that maps each entity type "
                 "(company, facility, geo-loc, movie, musicartist, other, person, product, sportsteam, "
                 "tvshow) to a list of strings. Answer {{}} if there is none.\n\nTweet: {text}")
SEGMENT_PROMPT = "请对下面的句子分词，词与词之间用空格隔开。\n\n{text}"
POS_PROMPT = ("Tag each word of this sentence with its Penn Treebank part-of-speech tag. Write word/TAG "
              "for each word, separated by spaces.\n\n{text}")


@dataclass(frozen=True)
class Item:
    """One example of the mixture: its task, the conversation, and the reference answer (last turn)."""

    task: str
    messages: tuple[dict, ...]

    @property
    def prompt(self) -> list[dict]:
        """The conversation up to the last assistant turn: what the model sees when generating."""
        return list(self.messages[:-1])

    @property
    def reference(self) -> str:
        return self.messages[-1]["content"]


def _single(task: str, prompt: str, answer: str) -> Item:
    return Item(task, ({"role": "user", "content": prompt}, {"role": "assistant", "content": answer}))


def entities_json(tokens: Sequence[str], tags: Sequence[str]) -> str:
    """BIO-tagged tokens -> '{"person": ["Tom Hanks"], ...}' (types and strings in order of appearance)."""
    from companion.metrics import bio_spans

    found: dict[str, list[str]] = {}
    for kind, start, end in bio_spans(tags):
        found.setdefault(kind, []).append(" ".join(tokens[start:end]))
    return json.dumps(found, ensure_ascii=False)


def _turns_to_messages(turns: Sequence[str]) -> tuple[dict, ...]:
    """Alternate user / assistant; a conversation with an odd number of turns drops its last."""
    turns = list(turns)[: len(turns) // 2 * 2]
    return tuple({"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns))


def task_items(task: str, split: str) -> list[Item]:
    """Every example of one task from one split of its corpus, in the corpus's order."""
    from companion import corpora

    if task == "sentiment":
        data = corpora.load_polarity()[split]
        return [_single(task, SENTIMENT_PROMPT.format(text=t), ["negative", "positive"][y])
                for t, y in zip(data["text"], data["label"])]
    if task == "entities":
        data = corpora.load_twitter_ner()[split]
        names = data.features["ner_tags"].feature.names
        return [_single(task, ENTITY_PROMPT.format(text=" ".join(toks)),
                        entities_json(toks, [names[i] for i in tags]))
                for toks, tags in zip(data["tokens"], data["ner_tags"])]
    if task == "segmentation":
        data = corpora.load_peoples_daily_cws()[split]
        return [_single(task, SEGMENT_PROMPT.format(text=text), " ".join(words))
                for text, words in zip(data["text"], data["words"])]
    if task == "pos":
        data = corpora.load_oanc_pos(n_sentences=3000)[split]
        names = data.features["pos_tags"].feature.names
        return [_single(task, POS_PROMPT.format(text=" ".join(toks)),
                        " ".join(f"{w}/{names[t]}" for w, t in zip(toks, tags)))
                for toks, tags in zip(data["tokens"], data["pos_tags"])]
    if task == "chat":
        items = []
        for language in corpora.CHATTERBOT_LANGUAGES:
            turns = corpora.load_chatterbot(language)[split]["turns"]
            items += [Item(task, _turns_to_messages(t)) for t in turns]
        return items
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def instruction_mixture(split: str, per_task: int, *, seed: int = 0, tasks: Sequence[str] = TASKS,
                        fits=None, allow_fewer: bool = False) -> list[Item]:
    """`per_task` examples of each task drawn from `split` with `seed` (those `fits` accepts), shuffled.

    A task with fewer usable examples raises, or gives all it has with ``allow_fewer=True``.
    """
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    rng = random.Random(seed)
    mixture = []
    for task in tasks:
        items = [it for it in task_items(task, split) if fits is None or fits(it)]
        if len(items) < per_task and not allow_fewer:
            raise ValueError(f"task {task!r} has only {len(items)} usable {split} examples, fewer than "
                             f"per_task={per_task}")
        mixture += rng.sample(items, min(per_task, len(items)))
    rng.shuffle(mixture)
    return mixture


# ----------------------------------------------------------------------------- scoring generated text

def parse_json_object(text: str) -> dict | None:
    """The first JSON object in `text` ({...}), or None if there is none or it does not parse."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _entity_set(obj: dict) -> Counter:
    out: Counter = Counter()
    for kind, values in obj.items():
        for v in values if isinstance(values, list) else [values]:
            if isinstance(v, str):
                out[(str(kind).lower(), v.strip().lower())] += 1
    return out


def prf(correct: int, predicted: int, gold: int) -> float:
    """F1 from counts; 1.0 when there was nothing to find and nothing was predicted."""
    if predicted == 0 and gold == 0:
        return 1.0
    return 2 * correct / (predicted + gold) if predicted + gold else 0.0


def chrf(hypothesis: str, reference: str, *, n: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović, 2015) of one sentence, 0-100: character n-gram F-beta averaged over n = 1..6, no spaces."""
    hyp, ref = hypothesis.replace(" ", ""), reference.replace(" ", "")
    precisions, recalls = [], []
    for k in range(1, n + 1):
        h = Counter(hyp[i:i + k] for i in range(len(hyp) - k + 1))
        r = Counter(ref[i:i + k] for i in range(len(ref) - k + 1))
        if not h or not r:
            continue
        match = sum((h & r).values())
        precisions.append(match / sum(h.values()))
        recalls.append(match / sum(r.values()))
    if not precisions:
        return 100.0 if hyp == ref else 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    return 100 * (1 + beta**2) * p * r / (beta**2 * p + r)


def _spans(words: Sequence[str]) -> Counter:
    out, start = Counter(), 0
    for w in words:
        out[(start, start + len(w), w)] += 1
        start += len(w)
    return out


def score(task: str, generated: str, reference: str) -> dict[str, float]:
    """Scores of one generated answer against the reference; malformed output scores 0 (and `valid` 0)."""
    text = generated.strip()
    if task == "sentiment":
        word = text.lower().rstrip(".!").strip()
        return {"exact": float(word == reference), "valid": float(word in ("positive", "negative"))}
    if task == "entities":
        obj, gold = parse_json_object(text), _entity_set(json.loads(reference))
        if obj is None:
            return {"f1": 0.0 if gold else 0.0, "valid": 0.0}
        pred = _entity_set(obj)
        return {"f1": prf(sum((pred & gold).values()), sum(pred.values()), sum(gold.values())), "valid": 1.0}
    if task == "segmentation":
        pred, gold = _spans(text.split()), _spans(reference.split())
        same = "".join(text.split()) == "".join(reference.split())
        return {"f1": prf(sum((pred & gold).values()), sum(pred.values()), sum(gold.values())),
                "valid": float(same)}
    if task == "pos":
        gold = [item.rsplit("/", 1) for item in reference.split()]
        pred = [item.rsplit("/", 1) for item in text.split()]
        ok = all(len(p) == 2 and p[1] for p in pred) and len(pred) == len(gold)
        right = sum(1 for g, p in zip(gold, pred) if len(p) == 2 and p == g)
        return {"accuracy": right / len(gold), "valid": float(ok)}
    if task == "chat":
        return {"chrf": chrf(text, reference), "valid": float(bool(text))}
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


MAIN_METRIC = {"sentiment": "exact", "entities": "f1", "segmentation": "f1", "pos": "accuracy", "chat": "chrf"}


# ----------------------------------------------------------------------------- generation

def _positions(model) -> int:
    """How many positions the model can read (n_positions or max_position_embeddings)."""
    config = model.config
    return int(getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings"))


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: Sequence[Sequence[dict]], *, max_new_tokens: int,
                     batch_size: int = 16, progress: bool = False) -> list[str]:
    """Greedy answers to chat prompts, batched with left padding; decoding stops at the eos token."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    try:
        from tqdm.auto import tqdm

        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generating", disable=not progress):
            chunk = [list(p) for p in prompts[start:start + batch_size]]
            rendered = [_render(tokenizer, p, generation_prompt=True) for p in chunk]
            width = max(map(len, rendered))
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rendered])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rendered])
            room = _positions(model) - width
            if room < 1:
                raise ValueError(f"a prompt has {width} tokens: no room left in the model's {_positions(model)} "
                                 "positions to generate; shorten the prompt")
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=min(max_new_tokens, room),
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
            for row in out[:, width:]:
                row = row.tolist()
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                answers.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return answers


# ----------------------------------------------------------------------------- the recipe

RECIPE_KEY = "instruct"
LORA_TARGETS = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "gpt2": ["c_attn", "c_proj", "c_fc"]}


@dataclass(frozen=True)
class TuneConfig:
    """How one model is instruction-tuned in the recipe (both methods share data and steps)."""

    model: str  # "smollm2" or "book-gpt"
    tasks: tuple[str, ...]
    max_length: int  # examples longer than this (prompt + answer, tokens) are left out
    block_size: int  # packed row length
    per_task: int  # training examples per task
    batch_size: int  # packed rows per step
    epochs: int
    lora_rank: int
    lora_lr: float
    full_lr: float
    eval_per_task: int = 40


TUNE_CONFIGS = {
    "smollm2": TuneConfig("smollm2", TASKS, max_length=192, block_size=512, per_task=240, batch_size=2,
                          epochs=1, lora_rank=8, lora_lr=1e-3, full_lr=5e-5),
    "book-gpt": TuneConfig("book-gpt", ("sentiment", "chat"), max_length=128, block_size=128, per_task=200,
                           batch_size=16, epochs=10, lora_rank=8, lora_lr=3e-3, full_lr=1e-3),
}


BASE_NAMES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "book-gpt": "book-gpt"}


def load_model(name: str):
    """(model, tokenizer) in float32: SmolLM2-135M-Instruct with its chat template, or book-gpt with
    `PLAIN_CHAT_TEMPLATE`."""
    import companion
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from companion.finetune import SMOLLM2

    if name == "smollm2":
        companion.resources.require("smollm2")
        path = SMOLLM2
    elif name == "book-gpt":
        path = companion.resources.model_dir("book-gpt")
    else:
        raise ValueError(f"model must be 'smollm2' or 'book-gpt', got {name!r}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tokenizer


def _fits(tokenizer, max_length: int):
    return lambda item: len(_render(tokenizer, item.messages, generation_prompt=False)) <= max_length


def eval_items(config: TuneConfig, tokenizer, split: str = "test") -> list[Item]:
    """`eval_per_task` examples of each task of `split` (drawn with seed 0 among those that fit), by task."""
    rng, fits, out = random.Random(0), _fits(tokenizer, config.max_length), []
    for task in config.tasks:
        items = [it for it in task_items(task, split) if fits(it)]
        out += sorted(rng.sample(items, min(config.eval_per_task, len(items))), key=items.index)
    return out


def max_new_tokens(tokenizer, items: Sequence[Item]) -> int:
    """The generation budget for a group of items: the longest reference answer in tokens, plus 16."""
    return max(len(tokenizer(it.reference, add_special_tokens=False)["input_ids"]) for it in items) + 16


def answer_all(model, tokenizer, items: Sequence[Item], *, batch_size: int = 16, progress: bool = False,
               budgets: dict[str, int] | None = None) -> list[str]:
    """Greedy answers to every item, task by task, each task with its own generation budget
    (`budgets[task]`, by default `max_new_tokens` of the task's items)."""
    answers: dict[int, str] = {}
    for task in dict.fromkeys(it.task for it in items):
        idx = [i for i, it in enumerate(items) if it.task == task]
        group = [items[i] for i in idx]
        budget = budgets[task] if budgets else max_new_tokens(tokenizer, group)
        outs = generate_answers(model, tokenizer, [it.prompt for it in group], batch_size=batch_size,
                                max_new_tokens=budget, progress=progress)
        answers.update(zip(idx, outs))
    return [answers[i] for i in range(len(items))]


def task_scores(items: Sequence[Item], answers: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean of every score of every task: {task: {metric: mean}}."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    per: dict[str, list[dict]] = {}
    for it, a in zip(items, answers):
        per.setdefault(it.task, []).append(score(it.task, a, it.reference))
    return {task: {m: round(sum(s[m] for s in rows) / len(rows), 6) for m in rows[0]} for task, rows in per.items()}


def _lora(model, config: TuneConfig, seed: int):
    from peft import LoraConfig, get_peft_model

    from companion.finetune import _quiet_peft

    torch.manual_seed(seed)
    targets = LORA_TARGETS[model.config.model_type if model.config.model_type in LORA_TARGETS else "llama"]
    with _quiet_peft():
        return get_peft_model(model, LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank,
                                                lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM"))


def _round_trainable_to_bf16(model) -> None:
    """Round the trained weights to bfloat16 (the stored precision), so the scores are the stored model's."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(p.to(torch.bfloat16).float())


def tune(config: TuneConfig, method: str, seed: int, *, max_steps: int | None = None, progress: bool = True):
    """Instruction-tune one model with `method` ("lora" or "full") from `seed`; returns (model, tokenizer, run)."""
    import time

    from companion.training import train

    if method not in ("lora", "full"):
        raise ValueError(f"method must be 'lora' or 'full', got {method!r}")
    model, tokenizer = load_model(config.model)
    fits = _fits(tokenizer, config.max_length)
    train_rows = pack([chat_example(tokenizer, it.messages)
                       for it in instruction_mixture("train", config.per_task, seed=seed, tasks=config.tasks,
                                                     fits=fits, allow_fewer=True)], config.block_size)
    val_rows = validation_rows(config, tokenizer)
    steps = config.epochs * (len(train_rows) // config.batch_size)
    steps = min(steps, max_steps) if max_steps else steps
    if method == "lora":
        model = _lora(model, config, seed)
    lr = config.lora_lr if method == "lora" else config.full_lr
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.config.use_cache = False  # with a cache, transformers would not read the packed position ids
    start = time.perf_counter()
    result = train(model, train_rows, steps=steps, lr=lr, batch_size=config.batch_size,
                   warmup=max(1, steps // 10), weight_decay=0.0, seed=seed,
                   collate_fn=partial(collate_packed, pad_id=pad), progress=progress)
    seconds = time.perf_counter() - start
    model.config.use_cache = True
    _round_trainable_to_bf16(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run = {"method": method, "seed": seed, "steps": steps, "lr": lr, "train_rows": len(train_rows),
           "train_tokens": int(sum(len(r["input_ids"]) for r in train_rows)),
           "trained_tokens": int(sum(int((r["labels"] != IGNORE_INDEX).sum()) for r in train_rows)),
           "trainable_parameters": trainable, "train_seconds": round(seconds, 1),
           "losses": [round(x, 4) for x in result.losses],
           "validation_loss": round(packed_loss(model, val_rows, pad), 4)}
    return model, tokenizer, run


@torch.no_grad()
def packed_loss(model, rows: Sequence[dict], pad_id: int, batch_size: int = 8) -> float:
    """Mean cross-entropy per labelled token over packed rows (assistant tokens only)."""
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate_packed(rows[start:start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        labels = batch["labels"][:, 1:]
        total += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), reduction="sum",
                                       ignore_index=IGNORE_INDEX))
        count += int((labels != IGNORE_INDEX).sum())
    return total / count


def validation_rows(config: TuneConfig, tokenizer) -> list[dict]:
    """The packed validation mixture (40 examples per task, seed 0) on which every run's loss is measured."""
    fits = _fits(tokenizer, config.max_length)
    return pack([chat_example(tokenizer, it.messages)
                 for it in instruction_mixture("validation", 40, seed=0, tasks=config.tasks, fits=fits,
                                              allow_fewer=True)], config.block_size)


def save_adapter_bf16(model, folder: Path, base_name: str) -> None:
    """`model.save_pretrained(folder)` with the adapter weights in bfloat16 (half the bytes), the base
    recorded by its name (not this machine's path) and no generated model card."""
    from safetensors.torch import load_file, save_file

    model.save_pretrained(folder)
    folder = Path(folder)
    (folder / "README.md").unlink(missing_ok=True)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_name
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    path = folder / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(path).items()}, path, metadata={"format": "pt"})


def load_tuned(name: str, folder: Path):
    """(model, tokenizer): a shipped or saved LoRA adapter of the recipe on its base model, float32, eval mode."""
    from peft import PeftModel

    from companion.finetune import _quiet_peft

    model, tokenizer = load_model(name)
    with _quiet_peft():
        return PeftModel.from_pretrained(model, folder).eval(), tokenizer


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_recipe(out: Path, *, models: Sequence[str] = ("smollm2", "book-gpt"),
               methods: Sequence[str] = ("lora", "full"), seeds: Sequence[int] = (0, 1, 2),
               max_steps: int | None = None, eval_per_task: int | None = None, progress: bool = True) -> dict:
    """Tune every model with every method and seed, answer the test items, write parts and results.json.

    Each finished run is saved as parts/MODEL-METHOD-seed-S.json (its answers included) and skipped
    when the recipe is run again with the same settings, so runs can be split across processes.
    """
    import dataclasses
    import time

    from companion.provenance import environment, seed_summary
    from companion.resources import sha256

    start = time.perf_counter()
    out = Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    results = {"key": RECIPE_KEY, "models": {}, "max_steps": max_steps}
    artifacts = {}
    for name in models:
        config = TUNE_CONFIGS[name]
        if eval_per_task is not None:
            config = dataclasses.replace(config, eval_per_task=eval_per_task)
        settings = {"config": dataclasses.asdict(config), "max_steps": max_steps}
        base_model, tokenizer = load_model(name)
        items = eval_items(config, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        runs = {}
        for variant in ["base"] + [f"{m}-seed-{s}" for m in methods for s in seeds]:
            path = out / "parts" / f"{name}-{variant}.json"
            if path.exists() and json.loads(path.read_text(encoding="utf-8"))["settings"] == json.loads(
                    json.dumps(settings)):
                runs[variant] = json.loads(path.read_text(encoding="utf-8"))
                continue
            if variant == "base":
                model, run = base_model, {"method": "base", "validation_loss": round(
                    packed_loss(base_model, validation_rows(config, tokenizer), pad), 4)}
            else:
                method, seed = variant.split("-seed-")
                model, tokenizer, run = tune(config, method, int(seed), max_steps=max_steps, progress=progress)
                if method == "lora" and int(seed) == min(seeds):
                    save_adapter_bf16(model, out / name / variant, BASE_NAMES[name])
            t0 = time.perf_counter()
            answers = answer_all(model, tokenizer, items, progress=progress)
            run.update(generate_seconds=round(time.perf_counter() - t0, 1), answers=answers,
                       scores=task_scores(items, answers), settings=settings)
            _write_json(path, run)
            runs[variant] = run
            print(f"{name} {variant}: {json.dumps(run['scores'])}")
        summary = {"base": runs["base"]["scores"]}
        for m in methods:
            per_seed = [runs[f"{m}-seed-{s}"]["scores"] for s in seeds]
            summary[m] = {task: {metric: seed_summary([p[task][metric] for p in per_seed])
                                 for metric in per_seed[0][task]} for task in per_seed[0]}
        results["models"][name] = {
            "config": settings["config"], "n_eval": len(items),
            "decoding": "greedy; stops at the eos token; budget per task: longest reference + 16 tokens",
            "scores": summary,
            "validation_loss": {v: r["validation_loss"] for v, r in runs.items()},
            "runs": {v: {k: x for k, x in r.items() if k not in ("answers", "settings")} for v, r in runs.items()},
        }
        for path in sorted((out / "parts").glob(f"{name}-*.json")) + sorted((out / name).rglob("*.*")):
            artifacts[str(path.relative_to(out))] = sha256(path)
    compute = sum(r.get("train_seconds", 0) + r["generate_seconds"] for m in results["models"].values()
                  for r in m["runs"].values())
    results.update(wall_seconds=round(time.perf_counter() - start, 1),  # this call's (parts are reused)
                   compute_seconds=round(compute, 1), artifacts=artifacts, **environment())
    _write_json(out / "results.json", results)
    return results


def headline(results: dict) -> str:
    """One line per model and method: the main score of every task."""
    lines = []
    for name, r in results["models"].items():
        for variant, scores in r["scores"].items():
            cells = []
            for task, metrics in scores.items():
                value = metrics[MAIN_METRIC[task]]
                cells.append(f"{task} {value['mean']:.3f}±{value['std']:.3f}" if isinstance(value, dict)
                             else f"{task} {value:.3f}")
            lines.append(f"{name} {variant}: " + ", ".join(cells))
    return "\n".join(lines)


def shipped_results(folder: Path | None = None) -> dict:
    """The recipe's results.json (default: the shipped copy), every artifact checked against its sha256."""
    from companion.provenance import verified_results
    from companion.recipes import RESULTS

    return verified_results(Path(folder) if folder is not None else RESULTS / RECIPE_KEY, RECIPE_KEY)


def shipped_answers(name: str, variant: str, folder: Path | None = None) -> list[str]:
    """The answers a shipped run gave to the test items of `eval_items` (checked against results.json)."""
    from companion.recipes import RESULTS

    folder = Path(folder) if folder is not None else RESULTS / RECIPE_KEY
    results = shipped_results(folder)
    if name not in results["models"] or variant not in results["models"][name]["runs"]:
        raise ValueError(f"the recipe shipped no run {name!r} / {variant!r}")
    return json.loads((folder / "parts" / f"{name}-{variant}.json").read_text(encoding="utf-8"))["answers"]


def shipped_config(results: dict, name: str) -> TuneConfig:
    """The TuneConfig a results.json records for `name`."""
    values = dict(results["models"][name]["config"])
    return TuneConfig(**{**values, "tasks": tuple(values["tasks"])})
