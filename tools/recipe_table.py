"""Print the README's table of recipes from the shipped results: each recipe's training time
(summed over its runs, on the CPU it recorded) and headline numbers.

    python tools/recipe_table.py          # the markdown table
    python tools/recipe_table.py --check  # exit 1 if README.md's table differs from it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from companion import recipes, tagging  # noqa: E402

BEGIN, END = "<!-- recipe table: tools/recipe_table.py -->", "<!-- end of recipe table -->"
WHAT = {
    "book-gpt": "byte-level GPT pre-trained on the movie reviews (5,333 steps of 12 blocks)",
    "book-bert": "character BERT pre-trained with MLM on the movie reviews",
    "bert-standard-init": "book-bert from BERT's standard init: the validation curve only (1 seed)",
    "bert-ablation": "the BERT chapter's ablation of local_attention_init: 4 initialisations x 3 seeds, "
                     "250 steps: curves only",
    "book-gpt-choice": "book-gpt's recipe against its first one (16 blocks, lr 2e-3): curves only (3 seeds)",
    "polarity-search": "learning-rate / LP-FT grid for MiniLM, validation only (seed 0)",
    "polarity-plain": "MiniLM fully fine-tuned with common defaults (3 seeds)",
    "polarity-full": "MiniLM fully fine-tuned, chosen configuration (3 seeds)",
    "polarity-lora": "MiniLM with LoRA r=8 on every linear layer (3 seeds)",
    "polarity-decoder": "SmolLM2 with a classification head and LoRA (3 seeds)",
    "twitter-ner": "MiniLM token classification, Twitter NER (3 seeds)",
    "oanc-pos": "MiniLM token classification, OANC part-of-speech tags (3 seeds)",
    "peoples-daily-ner": "character BiLSTM, softmax vs CRF, People's Daily NER (3 seeds)",
    "peoples-daily-cws": "character BiLSTM, softmax vs CRF, People's Daily word segmentation (3 seeds)",
    "reviews-zh": "character BERT on Chinese reviews, to convergence (3 seeds)",
    "neural-lm-zh": "the language-model chapter's character MLP, People's Daily, 4 epochs (3 seeds)",
    "peft-compare": "full, probe, BitFit, LoRA r1-r16, DoRA, rsLoRA, IA3, adapters, prompt tuning, "
                    "int8-base LoRA (3 seeds)",
    "prompt-grid": "prompting SmolLM2 on polarity: template, k, calibration, order, choice grids on validation; "
                   "test once; chain of thought",
    "rag": "a retrieval assistant: BM25 / MiniLM / hybrid chosen on validation, SmolLM2 answers from "
           "the passages, a refusal rule (English and Chinese)",
    "codegen": "SmolLM2 writes HumanEval's 164 functions (greedy and 10 samples each); a sandbox tests them",
    "triples": "knowledge triples from template sentences with unseen wordings: patterns, a tagger (MiniLM / "
               "character BiLSTM, 3 seeds), SmolLM2 with JSON (English and Chinese)",
    "instruct": "instruction tuning of SmolLM2 and book-gpt on a five-task mixture, LoRA and full (3 seeds)",
    "distill": "the polarity MiniLM distilled into 2-layer students: hard labels, soft targets, both "
               "(temperature chosen on validation; 3 seeds)",
    "prune-recover": "the polarity MiniLM pruned (20% / 50% of weights, 25% of heads, half the heads and "
                     "FFN), then a 2-epoch recovery fine-tune (3 seeds)",
    "adversarial": "the polarity MiniLM (LoRA) fine-tuned clean, with FGM and with PGD on the embeddings "
                   "(eps chosen on validation), attacked in embedding space and character by character "
                   "(3 seeds)",
    "continual": "one MiniLM fine-tuned on polarity, then POS, then NER: sequential, replay, EWC (lambda "
                 "chosen on validation) and one LoRA adapter per task (3 seeds)",
    "draft": "SmolLM2 distilled into a 2-layer draft on its own greedy answers, for speculative decoding "
             "(3 seeds; k = 3)",
}


def _row(key: str) -> tuple[str, str, str] | None:
    """(minutes, device, headline) of a shipped recipe; None if it is not shipped."""
    if key in recipes.RECIPES:
        path = recipes.CHECKPOINTS / key / "recipe.json"
        if not path.exists():
            return None
        r = json.loads(path.read_text())
        unit = r["validation_loss_unit"]
        return f"{r['train_seconds'] / 60:.0f}", r["device"], \
            f"validation loss {r['final_validation_loss']:.4f} {unit}"
    if key == recipes.BERT_STANDARD:
        path = recipes.RESULTS / key / "recipe.json"
        if not path.exists():
            return None
        r = json.loads(path.read_text())
        return f"{r['train_seconds'] / 60:.0f}", r["device"], \
            f"validation loss {r['final_validation_loss']:.4f} {r['validation_loss_unit']}"
    folder = recipes.RESULTS / key
    if not (folder / "results.json").exists():
        return None
    if key == recipes.BERT_ABLATION:
        r = recipes.shipped_results(key)
        return f"{r['train_seconds'] / 60:.0f}", r["device"], recipes.bert_ablation_headline(r)
    if key == recipes.GPT_CHOICE:
        r = recipes.shipped_results(key)
        seconds = sum(run["train_seconds"] for run in r["runs"])
        return f"{seconds / 60:.0f}", r["device"], recipes.gpt_choice_headline(r)
    if key == "peft-compare":
        from companion import peft_compare

        r = peft_compare.shipped_results(folder)
        seconds = sum(run["train_seconds"] for m in r["methods"].values() for run in m["runs"])
        loras = [m for m in r["methods"] if m.startswith(("lora-", "dora-", "rslora-"))]
        chosen = max(loras, key=lambda m: r["methods"][m]["metrics"]["validation_accuracy"]["mean"])
        line = ", ".join(f"{m} {_pm(r['methods'][m]['metrics']['test_accuracy'])}" for m in ["full", chosen])
        line += f" (the LoRA chosen on validation), probe {_pm(r['methods']['probe']['metrics']['test_accuracy'])}"
        return f"{seconds / 60:.0f}", r["device"], f"test accuracy: {line} ({len(r['methods'])} methods)"
    if key == "prompt-grid":
        from companion import prompt_grid

        r = prompt_grid.shipped_results(folder)
        return f"{r['wall_seconds'] / 60:.0f}", r["device"], prompt_grid.headline(r)
    if key == "instruct":
        from companion import instruct

        r = instruct.shipped_results(folder)
        seconds = sum(run.get("train_seconds", 0) for m in r["models"].values() for run in m["runs"].values())
        s = r["models"]["smollm2"]["scores"]
        line = "SmolLM2 " + ", ".join(
            f"{t} {instruct.MAIN_METRIC[t]} {s['base'][t][instruct.MAIN_METRIC[t]]:.3f} -> "
            f"{s['lora'][t][instruct.MAIN_METRIC[t]]['mean']:.3f} (LoRA)" for t in s["base"])
        return f"{seconds / 60:.0f}", r["device"], line
    if key in ("rag", "codegen", "triples"):
        from importlib import import_module

        module = import_module(f"companion.{key}")
        r = module.shipped_results(folder)
        seconds = r["compute_seconds"] if key == "codegen" else r["wall_seconds"]  # codegen resumes parts
        return f"{seconds / 60:.0f}", r["device"], module.headline(r).replace("\n", "; ")
    if key in recipes.COMPRESSION_MODULES:
        from importlib import import_module

        module = import_module(recipes.COMPRESSION_MODULES[key])
        r = recipes.shipped_results(key)
        return f"{r['wall_seconds'] / 60:.0f}", r["device"], module.headline(r).replace("\n", "; ")
    if key == "reviews-zh":
        from companion import reviews

        r = reviews.shipped_results(folder)
        seconds = r["wall_seconds"]  # the search's runs included
        return f"{seconds / 60:.0f}", r["device"], reviews.headline(r)
    if key == "neural-lm-zh":
        from companion import neural_lm

        r = neural_lm.shipped_results(folder)
        search = r["chosen_on_validation"]["comparison"] if r["chosen_on_validation"] else []
        searched = {c["seed"] for c in search}  # the chosen candidate's run is that seed's run
        seconds = sum(c["train_seconds"] for c in search) + sum(run["train_seconds"] for run in r["runs"]
                                                                if run["seed"] not in searched)
        return f"{seconds / 60:.0f}", r["device"], neural_lm.headline(r)
    if key in recipes.POLARITY_RECIPES:
        r = recipes.shipped_results(key)
        if "candidates" in r:
            seconds = sum(run["train_seconds"] for c in r["candidates"] for run in c["runs"])
            best = {m: f"lr {c['lr']:g}{' LP-FT' if c['probe_init'] else ''}" for m, c in r["chosen"].items()}
            return f"{seconds / 60:.0f}", r["device"], "chosen: " + ", ".join(f"{m} {c}" for m, c in best.items())
        m = r["metrics"]["test_accuracy"]
        seconds = sum(r["metrics"]["train_seconds"]["values"])
        note = f" (timing: {r['timing_note']})" if "timing_note" in r else ""
        return f"{seconds / 60:.0f}", r["device"], f"test accuracy {_pm(m)}{note}"
    r = tagging.shipped_results(key)
    if "variants" in r:
        seconds = sum(sum(v["metrics"]["train_seconds"]["values"]) for v in r["variants"].values())
        line = "; ".join(f"{name} test F1 {_pm(v['metrics']['test_f1'])}" for name, v in r["variants"].items())
    else:
        seconds = sum(r["metrics"]["train_seconds"]["values"])
        line = f"{r['headline'].replace('_', ' ')} {_pm(r['metrics'][r['headline']])}"
    return f"{seconds / 60:.0f}", r["device"], line


def _pm(summary: dict) -> str:
    """mean ± std of a seed summary."""
    return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def table() -> str:
    """The markdown table of every recipe (those not shipped yet say so)."""
    keys = [*recipes.RECIPES, recipes.BERT_STANDARD, recipes.BERT_ABLATION, recipes.GPT_CHOICE,
            *recipes.POLARITY_RECIPES, *tagging.RECIPE_KEYS,
            "reviews-zh", "neural-lm-zh", "peft-compare", "prompt-grid", "instruct",
            "rag", "codegen", "triples", "distill", "prune-recover", "adversarial",
            "continual", "draft"]
    lines = ["| recipe | what | training minutes (sum over runs) | recorded on | headline |",
             "| --- | --- | ---: | --- | --- |"]
    for key in keys:
        row = _row(key)
        minutes, device, headline = row if row else ("-", "-", "not shipped yet")
        lines.append(f"| `{key}` | {WHAT.get(key, '')} | {minutes} | {device} | {headline} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Print the table, or with --check compare it with README.md's."""
    text = table()
    if "--check" not in argv:
        print(text)
        return 0
    readme = (ROOT / "README.md").read_text()
    if BEGIN not in readme or END not in readme:
        print(f"README.md has no {BEGIN} ... {END} block")
        return 1
    current = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    if current != text:
        print("README.md's recipe table is stale: paste the output of python tools/recipe_table.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
