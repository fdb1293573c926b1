"""Recipe prompt-grid: the prompt-learning chapter's choices for SmolLM2-135M-Instruct, on validation.

The chapter prompts SmolLM2 as a sentiment classifier (Pang & Lee polarity) and makes every choice
on a balanced sample of validation sentences; scoring all those prompts takes longer than a
chapter may, so this recipe does it and ships the label log-probabilities:

- the template grid: 4 templates x 3 verbalizers, zero-shot, raw and calibrated (contextual
  calibration with the content-free inputs "N/A", "" and "[MASK]");
- the few-shot grid: k = 1, 2, 4, 8 random demonstrations, 3 draws each, raw and calibrated; the
  template, then k and calibration, are chosen by validation accuracy (the first best);
- the demonstrations' *order*: 5 orders of each draw of the chosen k, the spread over orders
  against the spread over draws, and the best order of each draw (chosen on validation);
- their *choice*: class-balanced draws (k/2 of each label, shuffled) against random ones;
- the chosen configurations scored once on all test sentences (zero-shot, every draw of the
  chosen k, the best orders, and the balanced draws if validation prefers them);
- chain of thought on synthetic two-step arithmetic word problems: the answer directly against
  "Let's think step by step", greedy decoding, exact match of the final number.

``run_grid(out)`` writes ``out/scores.npz`` (float32 log-probabilities: one row per sentence, then
one per content-free input), ``out/cot.json`` (every problem, both generations) and
``out/results.json`` (every accuracy, the choices, mean ± std over draws, time, device, versions
and the sha256 of both artifacts). ``python -m companion.recipes prompt-grid`` runs it on one
thread (``--subset N`` and ``--seeds`` for a quick look).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from companion.prompting import calibrate, label_log_probs
from companion.provenance import environment, seed_summary, verified_results

KEY = "prompt-grid"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
N_VAL = 128
SHOTS = (0, 1, 2, 4, 8)
DRAWS = (0, 1, 2)
ORDERS = 5  # orders of each draw in the order study, the drawn order first
CONTENT_FREE = ("N/A", "", "[MASK]")
INSTRUCTION = "Classify the sentiment of each movie review as positive or negative.\n\n"
QUERY = "Review: {x}\nSentiment:"
VERBALIZERS = {
    "positive / negative": ("negative", "positive"),  # (label 0, label 1)
    "good / bad": ("bad", "good"),
    "great / poor": ("poor", "great"),
}
CHAT_QUESTION = "Is this movie review positive or negative?\n{x}"
COT_PROBLEMS = 40
COT_TOKENS = {"direct": 8, "step by step": 128}  # max new tokens, greedy
COT_ASK = {
    "direct": "\nAnswer with the number only.",
    "step by step": "\nLet's think step by step.",  # Kojima et al. (2022)
}


def templates(tok) -> dict[str, str]:
    """The four templates of the chapter, each with one slot {x}; `chat` is SmolLM2's chat format."""
    chat = tok.apply_chat_template([{"role": "user", "content": CHAT_QUESTION}], tokenize=False,
                                   add_generation_prompt=True)
    return {
        "instruction": INSTRUCTION + QUERY,
        "question": "{x}\nQuestion: Is this movie review positive or negative?\nAnswer:",
        "cloze": "{x} All in all, the movie was",
        "chat": chat,
    }


def validation_sample(labels: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of n sentences, n/2 of each label, drawn once with `seed` (the chapter's sample)."""
    labels = np.asarray(labels)
    if n < 2 or n % 2:
        raise ValueError(f"n must be an even number of at least 2, got {n}")
    rng = np.random.default_rng(seed)
    picks = []
    for c in (0, 1):
        pool = np.flatnonzero(labels == c)
        if len(pool) < n // 2:
            raise ValueError(f"only {len(pool)} sentences of label {c}, {n // 2} asked for")
        picks.append(rng.choice(pool, n // 2, replace=False))
    return np.sort(np.concatenate(picks))


def label_token(tok, template: str, word: str) -> int:
    """The one token of a label word: ' word' in running text, 'Word' at the start of the chat answer."""
    form = word.capitalize() if template == "chat" else " " + word
    ids = tok(form, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"the label word {form!r} is {len(ids)} tokens, not one: {ids}")
    return ids[0]


def encode(tok, template: str, sentences: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """Token ids of everything before {x} (shared by all queries), and of each query."""
    if template.count("{x}") != 1:
        raise ValueError("a template needs exactly one slot {x}")
    before, after = template.split("{x}")
    space = " " if before.endswith(" ") else ""  # the space goes with the sentence
    prefix = tok(before.removesuffix(" "), add_special_tokens=False)["input_ids"]
    queries = [tok(space + s + after, add_special_tokens=False)["input_ids"] for s in sentences]
    return prefix, queries


def pick_demonstrations(labels: Sequence[int], k: int, draw: int, *, balanced: bool = False,
                        order: Sequence[int] | None = None) -> np.ndarray:
    """Indices of k training sentences: random (the chapter's draws, rng [k, draw]) or class-balanced
    (k // 2 of each label, one more of a random label if k is odd, shuffled; rng [k, draw, 1]);
    `order` permutes them (a permutation of range(k))."""
    labels = np.asarray(labels)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not balanced:
        picks = np.random.default_rng([k, draw]).choice(len(labels), k, replace=False)
    else:
        rng = np.random.default_rng([k, draw, 1])
        extra = int(rng.integers(2)) if k % 2 else None
        counts = [k // 2 + (extra == c) for c in (0, 1)]
        picks = np.concatenate([rng.choice(np.flatnonzero(labels == c), counts[c], replace=False)
                                for c in (0, 1)])
        picks = picks[rng.permutation(k)]
    if order is not None:
        if sorted(order) != list(range(k)):
            raise ValueError(f"order must be a permutation of range({k}), got {list(order)}")
        picks = picks[list(order)]
    return picks


def demonstration_text(texts: Sequence[str], labels: Sequence[int], picks: Sequence[int],
                       words: Sequence[str]) -> str:
    """The demonstrations in the query's own format: 'Review: ...\\nSentiment: word\\n\\n' each."""
    return "".join(f"Review: {texts[i]}\nSentiment: {words[labels[i]]}\n\n" for i in picks)


def orders(k: int, draw: int, n: int = ORDERS) -> list[list[int]]:
    """n distinct orders of k demonstrations, the drawn order (identity) first; rng [k, draw, 2]."""
    n = min(n, math.factorial(k))
    rng, found = np.random.default_rng([k, draw, 2]), [list(range(k))]
    while len(found) < n:
        perm = rng.permutation(k).tolist()
        if perm not in found:
            found.append(perm)
    return found


def accuracies(log_probs: np.ndarray | torch.Tensor, labels: Sequence[int]) -> dict:
    """Raw and calibrated accuracy and the share answered positive, from the (n + content-free, 2)
    log-probabilities of one prompt (the last len(CONTENT_FREE) rows are the content-free inputs)."""
    labels = np.asarray(labels)
    probs = torch.as_tensor(np.asarray(log_probs, dtype=np.float64)).exp()
    n = len(labels)
    if probs.shape[0] != n + len(CONTENT_FREE) or probs.shape[1] != 2:
        raise ValueError(f"expected ({n} + {len(CONTENT_FREE)}, 2) log-probabilities, got {tuple(probs.shape)}")
    raw = probs[:n].argmax(-1).numpy()
    calibrated = calibrate(probs[:n], probs[n:]).argmax(-1).numpy()
    return {"accuracy": float((raw == labels).mean()), "calibrated": float((calibrated == labels).mean()),
            "says_positive": float(raw.mean())}


# --- chain of thought on two-step arithmetic -----------------------------------------------------

NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas"]


def word_problems(n: int, seed: int = 0) -> list[dict]:
    """n synthetic two-step word problems {"question", "answer"} (small whole numbers, answer > 0)."""
    rng = np.random.default_rng(seed)
    problems = []
    for i in range(n):
        name = NAMES[int(rng.integers(len(NAMES)))]
        a, b, c = (int(x) for x in rng.integers([3, 2, 2], [13, 10, 10]))
        kind = i % 4
        if kind == 0:
            q, ans = (f"{name} has {a + c} apples, buys {b} more and then eats {c}. "
                      f"How many apples does {name} have now?", a + b)
        elif kind == 1:
            q, ans = (f"A box holds {a} pencils. There are {b} boxes, and {c} pencils are lost. "
                      "How many pencils are left?", a * b - c)
        elif kind == 2:
            q, ans = (f"{name} reads {a} pages a day for {b} days, and then {c} more pages. "
                      f"How many pages does {name} read in total?", a * b + c)
        else:
            q, ans = (f"A bus has {a + b} passengers. At the first stop {b} get off, and at the "
                      f"second stop {c} get on. How many passengers are on the bus now?", a + c)
        problems.append({"question": q, "answer": ans})
    return problems


def final_number(text: str, style: str) -> int | None:
    """The answer in a generation: the first number (direct), or the number after the last 'answer
    is' (step by step; else the last number in the text). None if there is none."""
    if style not in COT_ASK:
        raise ValueError(f"style must be one of {list(COT_ASK)}, got {style!r}")
    text = text.replace(",", "")
    if style == "direct":
        found = re.findall(r"-?\d+", text)
        return int(found[0]) if found else None
    after = re.findall(r"answer is\D{0,12}?(-?\d+)", text, flags=re.I)
    if after:
        return int(after[-1])
    found = re.findall(r"-?\d+", text)
    return int(found[-1]) if found else None


@torch.no_grad()
def generate_answer(model, tok, question: str, style: str, max_new_tokens: int | None = None) -> str:
    """SmolLM2's greedy answer to a question in the chat format, asked directly or step by step."""
    if style not in COT_ASK:
        raise ValueError(f"style must be one of {list(COT_ASK)}, got {style!r}")
    prompt = tok.apply_chat_template([{"role": "user", "content": question + COT_ASK[style]}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens or COT_TOKENS[style],
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# --- the recipe ----------------------------------------------------------------------------------

def _first_best(scores: dict) -> object:
    """The key of the highest value, the first one on ties (dict order)."""
    best = None
    for key, value in scores.items():
        if best is None or value > scores[best]:
            best = key
    return best


def run_grid(out: str | Path, *, subset: int | None = None, draws: Sequence[int] = DRAWS,
             shots: Sequence[int] = SHOTS, n_orders: int = ORDERS, cot_problems: int = COT_PROBLEMS,
             cot_tokens: dict | None = None, model=None, tok=None) -> dict:
    """Run the recipe into `out` (scores.npz, cot.json, results.json) and return results.json's dict.

    `subset` (a quick look): that many validation sentences (balanced) and the first `subset` test
    sentences, at most `subset` word problems. `model` and `tok` default to SmolLM2-135M-Instruct.
    """
    import companion
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from companion.corpora import load_polarity

    draws = [int(d) for d in draws]
    shots = sorted({int(k) for k in shots} | {0})
    if not draws or len(set(draws)) != len(draws):
        raise ValueError(f"draws must be a non-empty list without repeats, got {draws}")
    if subset is not None and (subset < 2 or subset % 2):
        raise ValueError(f"subset must be an even number of at least 2, got {subset}")
    if n_orders < 1 or cot_problems < 0 or min(shots) < 0:
        raise ValueError("n_orders must be at least 1, cot_problems and every k at least 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    seconds = {}
    if model is None:
        companion.resources.require("smollm2")
        tok = AutoTokenizer.from_pretrained(SMOL)
        model = AutoModelForCausalLM.from_pretrained(SMOL).eval()
    cot_tokens = {**COT_TOKENS, **(cot_tokens or {})}

    polarity = load_polarity()
    train_texts, train_labels = list(polarity["train"]["text"]), np.array(polarity["train"]["label"])
    all_val_texts, all_val_labels = list(polarity["validation"]["text"]), np.array(polarity["validation"]["label"])
    test_texts, test_labels = list(polarity["test"]["text"]), np.array(polarity["test"]["label"])
    sample = validation_sample(all_val_labels, subset or N_VAL)
    val_texts, val_y = [all_val_texts[i] for i in sample], all_val_labels[sample]
    if subset is not None:
        test_texts, test_labels = test_texts[:subset], test_labels[:subset]
        cot_problems = min(cot_problems, subset)
    arrays: dict[str, np.ndarray] = {"val/sample": sample.astype(np.int64)}

    def score(template: str, sentences: Sequence[str], label_ids: Sequence[int]) -> np.ndarray:
        prefix, queries = encode(tok, template, list(sentences) + list(CONTENT_FREE))
        return label_log_probs(model, queries, label_ids, prefix=prefix).numpy().astype(np.float32)

    # the template grid: every verbalizer's two words in one pass per template
    start = time.perf_counter()
    words = [w for pair in VERBALIZERS.values() for w in pair]
    template_rows = []
    for name, template in templates(tok).items():
        logp = score(template, val_texts, [label_token(tok, name, w) for w in words])
        arrays[f"val/template/{name}"] = logp
        for j, verbalizer in enumerate(VERBALIZERS):
            pair = logp[:, 2 * j:2 * j + 2]
            template_rows.append({"template": name, "verbalizer": verbalizer, **accuracies(pair, val_y),
                                  "label_mass": float(np.exp(pair[:len(val_y)]).sum(-1).mean())})
    best = _first_best({(r["template"], r["verbalizer"]): r["accuracy"] for r in template_rows})
    zero = next(r for r in template_rows if (r["template"], r["verbalizer"]) == best)
    template_name, verbalizer = best
    zero_calibrated = zero["calibrated"] > zero["accuracy"]
    seconds["template grid"] = time.perf_counter() - start

    # the few-shot grid, in the instruction format with the chosen verbalizer
    start = time.perf_counter()
    label_words = VERBALIZERS[verbalizer]
    label_ids = [label_token(tok, "instruction", w) for w in label_words]

    def few_shot_template(picks) -> str:
        return INSTRUCTION + demonstration_text(train_texts, train_labels, picks, label_words) + QUERY

    j = list(VERBALIZERS).index(verbalizer)
    arrays["val/k0"] = arrays[f"val/template/{template_name}"][:, 2 * j:2 * j + 2]
    few_rows = [{"k": 0, "draw": 0, "positive_demos": 0, **accuracies(arrays["val/k0"], val_y)}]
    for k in [k for k in shots if k > 0]:
        for draw in draws:
            picks = pick_demonstrations(train_labels, k, draw)
            arrays[f"val/k{k}/draw{draw}"] = score(few_shot_template(picks), val_texts, label_ids)
            few_rows.append({"k": k, "draw": draw, "positive_demos": int(train_labels[picks].sum()),
                             **accuracies(arrays[f"val/k{k}/draw{draw}"], val_y)})
    means = {}
    for k in shots:
        for column in ("accuracy", "calibrated"):
            means[k, column] = float(np.mean([r[column] for r in few_rows if r["k"] == k]))
    best_k, column = _first_best(means)
    few_calibrated = column == "calibrated"
    if shots == [0]:
        best_k, column, few_calibrated = 0, "accuracy", False
    seconds["few-shot grid"] = time.perf_counter() - start

    # the demonstrations' order and choice, at the chosen k and calibration
    start = time.perf_counter()
    order_rows, balanced_rows, order_choice, strategy = [], [], {}, "random"
    if best_k >= 2:
        for draw in draws:
            for o, perm in enumerate(orders(best_k, draw, n_orders)):
                name = f"val/k{best_k}/draw{draw}" if o == 0 else f"val/order/k{best_k}/draw{draw}/order{o}"
                if o:
                    picks = pick_demonstrations(train_labels, best_k, draw, order=perm)
                    arrays[name] = score(few_shot_template(picks), val_texts, label_ids)
                order_rows.append({"draw": draw, "order": o, "permutation": perm,
                                   **accuracies(arrays[name], val_y)})
            mine = [r for r in order_rows if r["draw"] == draw]
            order_choice[draw] = _first_best({r["order"]: r[column] for r in mine})
        for draw in draws:
            picks = pick_demonstrations(train_labels, best_k, draw, balanced=True)
            arrays[f"val/balanced/k{best_k}/draw{draw}"] = score(few_shot_template(picks), val_texts, label_ids)
            balanced_rows.append({"draw": draw, "positive_demos": int(train_labels[picks].sum()),
                                  **accuracies(arrays[f"val/balanced/k{best_k}/draw{draw}"], val_y)})
        random_mean = np.mean([r[column] for r in few_rows if r["k"] == best_k])
        if np.mean([r[column] for r in balanced_rows]) > random_mean:
            strategy = "balanced"
    seconds["order and choice"] = time.perf_counter() - start

    # the test set, once: the chosen prompts only
    start = time.perf_counter()

    def test_accuracy(name: str, calibrated: bool) -> float:
        return accuracies(arrays[name], test_labels)["calibrated" if calibrated else "accuracy"]

    chosen_template = templates(tok)[template_name]
    arrays["test/zero-shot"] = score(chosen_template, test_texts,
                                     [label_token(tok, template_name, w) for w in label_words])
    test = {"zero_shot": test_accuracy("test/zero-shot", zero_calibrated)}
    if best_k > 0:
        for draw in draws:
            picks = pick_demonstrations(train_labels, best_k, draw)
            arrays[f"test/k{best_k}/draw{draw}"] = score(few_shot_template(picks), test_texts, label_ids)
        test["few_shot"] = seed_summary([test_accuracy(f"test/k{best_k}/draw{d}", few_calibrated)
                                         for d in draws])
    if order_choice:
        values = []
        for draw, o in order_choice.items():
            name = f"test/k{best_k}/draw{draw}"
            if o:
                name = f"test/order/k{best_k}/draw{draw}/order{o}"
                perm = orders(best_k, draw, n_orders)[o]
                picks = pick_demonstrations(train_labels, best_k, draw, order=perm)
                arrays[name] = score(few_shot_template(picks), test_texts, label_ids)
            values.append(test_accuracy(name, few_calibrated))
        test["best_order"] = seed_summary(values)
    if strategy == "balanced":
        for draw in draws:
            picks = pick_demonstrations(train_labels, best_k, draw, balanced=True)
            arrays[f"test/balanced/k{best_k}/draw{draw}"] = score(few_shot_template(picks), test_texts,
                                                                  label_ids)
        test["balanced"] = seed_summary([test_accuracy(f"test/balanced/k{best_k}/draw{d}", few_calibrated)
                                         for d in draws])
    seconds["test"] = time.perf_counter() - start

    # chain of thought
    start = time.perf_counter()
    problems = word_problems(cot_problems)
    for p in problems:
        for style in COT_ASK:
            text = generate_answer(model, tok, p["question"], style, cot_tokens[style])
            p[style] = {"text": text, "number": final_number(text, style),
                        "tokens": len(tok(text, add_special_tokens=False)["input_ids"])}
            p[style]["correct"] = p[style]["number"] == p["answer"]
    cot = {}
    for style in COT_ASK:
        correct = [p[style]["correct"] for p in problems]
        cot[style] = {"exact_match": float(np.mean(correct)) if problems else None,
                      "correct": int(sum(correct)),
                      "mean_tokens": float(np.mean([p[style]["tokens"] for p in problems])) if problems else None}
    seconds["chain of thought"] = time.perf_counter() - start
    (out / "cot.json").write_text(json.dumps(problems, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    np.savez_compressed(out / "scores.npz", **arrays)

    from companion.resources import sha256

    def spread(rows, key, column):
        by = {}
        for r in rows:
            by.setdefault(r[key], []).append(r[column])
        return by

    order_spread = {}
    if order_rows:
        for col in ("accuracy", "calibrated"):
            within = spread(order_rows, "draw", col)
            order_spread[col] = {
                "std_over_orders_mean_over_draws": float(np.mean([np.std(v, ddof=1) for v in within.values()]))
                if n_orders > 1 else 0.0,
                "std_over_draws_drawn_order": seed_summary([v[0] for v in within.values()])["std"],
                "std_over_draws_best_order": seed_summary(
                    [within[d][o] for d, o in order_choice.items()])["std"],
            }
    results = {
        "recipe": KEY, "model": SMOL,
        "config": {"n_validation": len(val_y), "n_test": len(test_labels), "shots": shots, "draws": draws,
                   "orders": n_orders, "content_free": list(CONTENT_FREE), "instruction": INSTRUCTION,
                   "query": QUERY, "templates": templates(tok), "verbalizers": VERBALIZERS,
                   "cot_problems": len(problems), "cot_max_new_tokens": cot_tokens, "cot_ask": COT_ASK,
                   "cot_decoding": "greedy (do_sample=False), one problem at a time, chat template",
                   "subset": subset},
        "validation": {
            "templates": template_rows, "few_shot": few_rows,
            "few_shot_means": [{"k": k, "column": c, "mean": m} for (k, c), m in means.items()],
            "orders": order_rows, "order_spread": order_spread,
            "best_order": {str(d): o for d, o in order_choice.items()},
            "balanced": balanced_rows,
        },
        "chosen_on_validation": {"template": template_name, "verbalizer": verbalizer,
                                 "zero_shot_calibrated": bool(zero_calibrated), "k": best_k,
                                 "few_shot_calibrated": few_calibrated, "strategy": strategy,
                                 "by": "highest validation accuracy, the first on ties; k and calibration "
                                       "by the mean over the draws"},
        "test": test,
        "cot": cot,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "artifacts": {name: sha256(out / name) for name in ("scores.npz", "cot.json")},
        "wall_seconds": round(time.perf_counter() - wall, 1), **environment(model.device),
    }
    text = json.dumps(results, indent=1, ensure_ascii=False) + "\n"
    (out / "results.json").write_text(text, encoding="utf-8")
    return json.loads(text)  # as read back: tuples become lists


def shipped_results(folder: str | Path | None = None) -> dict:
    """results.json of a prompt-grid folder (default: the shipped copy), both artifacts' sha256 checked."""
    from companion.recipes import RESULTS

    return verified_results(Path(folder) if folder is not None else RESULTS / KEY, KEY)


def load_scores(folder: str | Path | None = None) -> dict[str, np.ndarray]:
    """The shipped log-probabilities (scores.npz) by name, after checking results.json's sha256."""
    from companion.recipes import RESULTS

    folder = Path(folder) if folder is not None else RESULTS / KEY
    shipped_results(folder)
    with np.load(folder / "scores.npz") as data:
        return {name: data[name] for name in data.files}


def load_cot(folder: str | Path | None = None) -> list[dict]:
    """The shipped chain-of-thought generations (cot.json), after checking results.json's sha256."""
    from companion.recipes import RESULTS

    folder = Path(folder) if folder is not None else RESULTS / KEY
    shipped_results(folder)
    return json.loads((folder / "cot.json").read_text(encoding="utf-8"))


def headline(results: dict) -> str:
    """One line: the choices and the test accuracies, mean ± std over the draws."""
    c, t = results["chosen_on_validation"], results["test"]
    line = (f"chosen: {c['template']} / {c['verbalizer']}, k = {c['k']}"
            f"{' calibrated' if c['few_shot_calibrated'] else ''}; test zero-shot {t['zero_shot']:.4f}")
    if "few_shot" in t:
        line += f", {c['k']}-shot {t['few_shot']['mean']:.4f} ± {t['few_shot']['std']:.4f}"
    if "best_order" in t:
        line += f", best order {t['best_order']['mean']:.4f} ± {t['best_order']['std']:.4f}"
    if "balanced" in t:
        line += f", balanced {t['balanced']['mean']:.4f} ± {t['balanced']['std']:.4f}"
    cot = results["cot"]
    if cot["direct"]["exact_match"] is not None:
        line += (f"; word problems direct {cot['direct']['exact_match']:.3f}, step by step "
                 f"{cot['step by step']['exact_match']:.3f}")
    return line
