"""The recipes behind the book's small pre-trained checkpoints and its fine-tuning results, and the
command that reruns them.

    python -m companion.recipes book-gpt            # the byte-level GPT of the GPT chapter, into runs/book-gpt
    python -m companion.recipes book-bert           # the character-level BERT of the BERT chapter, run longer
    python -m companion.recipes book-bert --steps 50 --out /tmp/bert   # a quick check elsewhere
    python -m companion.recipes book-gpt --replace-shipped   # maintainers: refresh the shipped copy
    python -m companion.recipes bert-standard-init  # book-bert from standard init: the curve only
    python -m companion.recipes book-gpt-choice     # book-gpt's recipe against its first one, 3 seeds
    python -m companion.recipes bert-ablation       # the halves of book-bert's local init, 3 seeds
    python -m companion.recipes polarity-search     # fine-tuning hyperparameters, chosen on validation
    python -m companion.recipes polarity-full       # MiniLM fully fine-tuned on polarity, 3 seeds
    python -m companion.recipes polarity-lora --max-steps 5 --subset 64 --seeds 0   # a quick check
    python -m companion.recipes neural-lm-zh        # the language-model chapter's MLP, 4 epochs, 3 seeds
    python -m companion.recipes continual           # polarity -> POS -> NER: forgetting and its remedies

Each run trains with `companion.training.train` on the movie-review corpus and writes a plain
Hugging Face folder (`config.json`, `model.safetensors`, the tokenizer, `recipe.json` with the
figures of the run) that `AutoModelForCausalLM` / `AutoModelForMaskedLM` / `AutoTokenizer` load.
By default it writes into `runs/<key>` under the current folder; it never writes into
`companion/checkpoints`, where the registry (`companion.resources`) finds the shipped copies by
name, and refuses an `--out` there. Maintainers replace a shipped copy explicitly:
`--replace-shipped` runs the full recipe into `runs/<key>` (or `--out`), then swaps the folder into
`companion/checkpoints/<key>`; `python tools/register_checkpoints.py` then records its new sha256
sums and figures in the registry.

The polarity recipes (`POLARITY_RECIPES`) fine-tune all-MiniLM-L6-v2 (and SmolLM2) on Pang & Lee
sentence polarity with `companion.finetune`, once per seed, and write `results.json` (every metric
as mean ± std over the seeds and per seed, the test probabilities of every run, steps, tokens,
time, device, threads, versions, commit, the configuration and where it was chosen) plus, for
LoRA, each seed's adapter (peft `save_pretrained`) and head (safetensors), with their sha256 in
`results.json`. `polarity-search` compares configurations on the validation split only; the
final recipes use what it chose. The shipped copies live in `companion/results/<key>`
(`shipped_results` checks every hash); `--replace-shipped` works as for the checkpoints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from companion.finetune import (
    SMOLLM2,
    FinetuneConfig,
    build_classifier,
    encode,
    evaluate,
    save_adapter,
    train_classifier,
    trainable_parameters,
)
from companion.provenance import check_run_arguments, environment, seed_summary, verified_results
from companion.resources import CHECKPOINTS, sha256
from companion.tagging import RECIPE_KEYS as TAGGING_RECIPES

REVIEWS = "reviews-zh"  # companion.reviews: the Chinese reviews' character model
NEURAL_LM = "neural-lm-zh"  # companion.neural_lm: the language-model chapter's MLP, trained for epochs
BERT_STANDARD = "bert-standard-init"  # book-bert from BERT's standard init: its validation curve only
GPT_CHOICE = "book-gpt-choice"  # book-gpt's recipe against its first one, 3 seeds: curves only
BERT_ABLATION = "bert-ablation"  # the halves of local_attention_init, 250 steps, 3 seeds: curves only
INSTRUCT = "instruct"  # companion.instruct: instruction tuning of SmolLM2 and book-gpt, LoRA and full
RAG = "rag"  # companion.rag: an assistant that retrieves before it answers, English and Chinese
TRIPLES = "triples"  # companion.triples: knowledge triples by patterns, a tagger and SmolLM2
CODEGEN = "codegen"  # companion.codegen: SmolLM2 writes HumanEval's functions; the sandbox tests them
DISTILL = "distill"  # companion.distill: the polarity MiniLM distilled into 2-layer students
PRUNE = "prune-recover"  # companion.prune: pruned polarity MiniLMs, recovered by a short fine-tune
ADVERSARIAL = "adversarial"  # companion.adversarial_recipe: clean, FGM and PGD fine-tuning, attacked
CONTINUAL = "continual"  # companion.continual_recipe: three tasks in sequence, forgetting and mitigations
DRAFT = "draft"  # companion.draft_recipe: SmolLM2 distilled into a 2-layer draft for speculative decoding
PEFT = "peft-compare"  # companion.peft_compare: PEFT methods side by side on polarity

EOT = "<|endoftext|>"
RUNS = Path("runs")  # the command's default output: runs/<key> under the current folder
RESULTS = Path(__file__).resolve().parent / "results"  # fine-tuning recipes: shipped results.json + adapters


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a pre-training run: model size, data, optimisation."""

    key: str
    objective: str  # "clm" (GPT) or "mlm" (BERT)
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    steps: int
    batch_size: int
    lr: float
    warmup: int
    eval_every: int = 500
    local_init: bool = False  # BERT: start attention local (companion.bert.local_attention_init)
    seed: int = 0


RECIPES = {
    r.key: r
    for r in [
        # The GPT chapter trains exactly this model for 500 steps. 12 blocks per step at lr 3e-3
        # (bench/train_clm.py --race) for the 8.2M tokens of the first recipe below: book-gpt-choice.
        Recipe("book-gpt", "clm", block_size=128, n_layer=4, n_head=4, n_embd=128,
               steps=5333, batch_size=12, lr=3e-3, warmup=100),
        # The BERT chapter trains this model for 500 steps.
        Recipe("book-bert", "mlm", block_size=64, n_layer=4, n_head=4, n_embd=128,
               steps=4000, batch_size=32, lr=1e-3, warmup=100, local_init=True),
    ]
}

# book-gpt's first recipe (until 2026-11-30): the same model and data, batches of 16 at lr 2e-3
BOOK_GPT_FIRST = replace(RECIPES["book-gpt"], steps=4000, batch_size=16, lr=2e-3)


# ----------------------------------------------------------------------------- tokenizers

def byte_tokenizer():
    """A `transformers` tokenizer equal to `ByteTokenizer(specials=("<|endoftext|>",))`: id = byte value."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    from companion.byte_bpe import unicode_to_bytes

    vocab = dict(unicode_to_bytes())
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
    tokenizer.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(EOT, special=True)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT)


def char_tokenizer(texts: list[str]):
    """A `transformers` tokenizer equal to `CharTokenizer.from_text("".join(texts), BERT_SPECIALS)`:
    one id per character of the training text, <pad>=0 <unk> <cls> <sep> <mask> first."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from companion.data import CharTokenizer

    ours = CharTokenizer.from_text("".join(texts), specials=CharTokenizer.BERT_SPECIALS)
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in ours.id_to_token.items()}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    tokenizer.decoder = decoders.Fuse()  # join the characters back without spaces between them
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<cls> $A <sep>", pair="<cls> $A <sep> $B:1 <sep>:1",
        special_tokens=[("<cls>", ours.cls_id), ("<sep>", ours.sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   cls_token="<cls>", sep_token="<sep>", mask_token="<mask>",
                                   clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------- data

def clean(text: str) -> str:
    """One review = one line: the corpus is lower-cased and tokenised already; its line breaks go."""
    return " ".join(text.split())


def mlm_blocks(tokenizer, documents: list[str], block_size: int) -> torch.Tensor:
    """<cls> + block_size-1 tokens per row, documents joined by <sep> (one split at a time)."""
    from companion.data import pack_blocks

    stream: list[int] = []
    for doc in documents:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    rows = pack_blocks(stream, block_size - 1)
    return torch.cat([torch.full((len(rows), 1), tokenizer.cls_token_id), rows], dim=1)


def mlm_collator(tokenizer, generator: torch.Generator | None = None):
    """The 15% / 80-10-10 `MLMCollator` for a `transformers` tokenizer with BERT's special tokens."""
    from companion.data import MLMCollator

    return MLMCollator(len(tokenizer), tokenizer.mask_token_id, tokenizer.pad_token_id,
                       tokenizer.all_special_ids, generator=generator)


# ----------------------------------------------------------------------------- running

def build(recipe: Recipe):
    """(tokenizer, model, train data, validation data, collate_fn) of a recipe."""
    from companion.bert import BertConfig, BertForPreTraining, local_attention_init
    from companion.corpora import load_movie_reviews
    from companion.data import BlockDataset, ByteTokenizer
    from companion.gpt import GPT, GPTConfig

    reviews = load_movie_reviews()
    train_docs, val_docs = list(reviews["train"]["text"]), list(reviews["validation"]["text"])
    torch.manual_seed(recipe.seed)
    if recipe.objective == "clm":
        tokenizer = byte_tokenizer()
        eot = tokenizer.eos_token_id
        ours = ByteTokenizer(specials=(EOT,))  # the same ids, for the companion data pipeline
        train_data = BlockDataset.from_documents(ours, train_docs, recipe.block_size, separator_id=eot)
        val_data = BlockDataset.from_documents(ours, val_docs, recipe.block_size, separator_id=eot)
        model = GPT(GPTConfig(vocab_size=len(tokenizer), block_size=recipe.block_size, n_layer=recipe.n_layer,
                              n_head=recipe.n_head, n_embd=recipe.n_embd))
        return tokenizer, model, train_data, val_data, None
    train_docs, val_docs = [clean(d) for d in train_docs], [clean(d) for d in val_docs]
    tokenizer = char_tokenizer(train_docs)
    train_data = [{"input_ids": row} for row in mlm_blocks(tokenizer, train_docs, recipe.block_size)]
    val_data = [{"input_ids": row} for row in mlm_blocks(tokenizer, val_docs, recipe.block_size)]
    model = BertForPreTraining(BertConfig(vocab_size=len(tokenizer), max_position=recipe.block_size,
                                          n_layer=recipe.n_layer, n_head=recipe.n_head, n_embd=recipe.n_embd,
                                          intermediate=4 * recipe.n_embd, nsp_head=False,
                                          pad_token_id=tokenizer.pad_token_id))
    if recipe.local_init:
        local_attention_init(model)
    collate = mlm_collator(tokenizer, torch.Generator().manual_seed(recipe.seed))
    return tokenizer, model, train_data, val_data, collate


@torch.no_grad()
def validation_loss(recipe: Recipe, model, val_data, collate=None) -> float:
    """Mean loss over the whole validation split (MLM: masks drawn with a fixed seed)."""
    from torch.utils.data import default_collate

    model.eval()
    device = next(model.parameters()).device  # after train() on a GPU the model stays there
    # MLM: the same masks on every call, whatever the training collator has drawn so far
    collate = default_collate if collate is None else replace(collate, generator=torch.Generator().manual_seed(1234))
    total = n = 0.0
    for i in range(0, len(val_data), 64):
        batch = collate([val_data[j] for j in range(i, min(len(val_data), i + 64))])
        out = model(**{k: v.to(device) for k, v in batch.items()})
        weight = (batch["labels"] != -100).sum().item() if recipe.objective == "mlm" else len(batch["input_ids"])
        total, n = total + out.loss.item() * weight, n + weight
    return total / n


def is_shipped(path: Path) -> bool:
    """Whether `path` is inside companion/checkpoints or companion/results, where the shipped
    checkpoints and recipe results live."""
    return any(Path(path).resolve().is_relative_to(root.resolve()) for root in (CHECKPOINTS, RESULTS))


def is_shipped_result(path: Path) -> bool:
    """Whether `path` is inside companion/results, where the polarity recipes' results live."""
    return Path(path).resolve().is_relative_to(RESULTS.resolve())


def run_folder(out: Path) -> Path:
    """`out` as a Path, created for a run; a ValueError if it lies inside companion/results."""
    out = Path(out)
    if is_shipped_result(out):
        raise ValueError(f"{out} is inside {RESULTS}, where the shipped results live: write elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    return out


def install(folder: Path, key: str) -> Path:
    """Replace the shipped checkpoint or results `key` by the run in `folder` (a maintainer's
    explicit step)."""
    dest = (CHECKPOINTS if key in RECIPES else RESULTS) / key
    dest.parent.mkdir(parents=True, exist_ok=True)
    new, old = dest.with_name(f".{key}.new"), dest.with_name(f".{key}.old")
    for leftover in (new, old):  # from an interrupted install
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(folder, new)
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def run(recipe: Recipe, out: Path, *, steps: int | None = None, save_model: bool = True) -> dict:
    """Train `recipe` (optionally for another number of steps) and write its folder to `out`
    (`save_model=False`: only `recipe.json`, the figures and the validation curve)."""
    from companion.bert import to_hf_bert
    from companion.gpt import to_hf_gpt2
    from companion.training import train

    if is_shipped(out):
        raise ValueError(f"{out} is inside {CHECKPOINTS}, where the shipped checkpoints live: write the run "
                         "elsewhere, then replace a shipped copy with install() (python -m companion.recipes "
                         "KEY --replace-shipped)")
    steps = steps or recipe.steps
    tokenizer, model, train_data, val_data, collate = build(recipe)
    start = time.perf_counter()
    result = train(model, train_data, eval_data=val_data, steps=steps, lr=recipe.lr,
                   batch_size=recipe.batch_size, warmup=min(recipe.warmup, steps // 10),
                   eval_every=min(recipe.eval_every, steps), eval_batches=8, collate_fn=collate, seed=recipe.seed)
    seconds = time.perf_counter() - start
    final = validation_loss(recipe, model, val_data, collate)
    per_step = recipe.batch_size * recipe.block_size
    figures = {
        "recipe": asdict(recipe) | {"steps": steps},
        "parameters": model.num_parameters(),
        "steps": result.step,
        "tokens": result.step * per_step,
        "train_seconds": round(seconds, 1),
        "tokens_per_s": round(result.tokens_per_s, 1),
        "device": f"{next(model.parameters()).device} ({platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} threads)",
        "final_validation_loss": round(final, 4),
        "validation_loss_unit": "nats per byte" if recipe.objective == "clm" else "nats per masked character",
        "validation_tokens": len(val_data) * recipe.block_size,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "history": result.history.dropna(subset=["eval_loss"])[["step", "train_loss", "eval_loss"]]
        .round(4).to_dict(orient="list"),
    }
    out.mkdir(parents=True, exist_ok=True)
    if save_model:
        (to_hf_gpt2(model) if recipe.objective == "clm" else to_hf_bert(model)).save_pretrained(out)
        tokenizer.save_pretrained(out)
    (out / "recipe.json").write_text(json.dumps(figures, indent=1) + "\n")
    return figures


def gpt_choice(out: Path, *, seeds: tuple[int, ...] = (0, 1, 2), steps: int | None = None) -> dict:
    """book-gpt's recipe and its first one, from each seed (curves only, `out`/NAME-seed-S/recipe.json),
    and `out`/results.json with their final validation losses; finished runs are kept."""
    seeds = check_run_arguments(seeds, None, None)
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    contenders = {"first": BOOK_GPT_FIRST, "current": RECIPES["book-gpt"]}
    runs, artifacts, start = [], {}, time.perf_counter()
    for name, recipe in contenders.items():
        for seed in seeds:
            one, folder = replace(recipe, seed=seed), out / f"{name}-seed-{seed}"
            path = folder / "recipe.json"
            done = json.loads(path.read_text()) if path.exists() else None
            if done is None or done["recipe"] != asdict(one) | {"steps": steps or one.steps}:
                print(f"{name} recipe, seed {seed}: training", flush=True)
                done = run(one, folder, steps=steps, save_model=False)
            runs.append({"recipe": name, "seed": seed, "steps": done["steps"], "tokens": done["tokens"],
                         "train_seconds": done["train_seconds"], "device": done["device"],
                         "final_validation_loss": done["final_validation_loss"]})
            artifacts[f"{name}-seed-{seed}/recipe.json"] = sha256(path)
    results = {
        "key": GPT_CHOICE, "recipes": {name: asdict(r) for name, r in contenders.items()}, "seeds": seeds,
        "validation_loss_unit": "nats per byte",
        "final_validation_loss": {name: seed_summary([r["final_validation_loss"] for r in runs
                                                      if r["recipe"] == name]) for name in contenders},
        "runs": runs, "artifacts": artifacts, "wall_seconds": round(time.perf_counter() - start, 1),
        **environment(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def gpt_choice_headline(results: dict) -> str:
    """One line: each recipe's final validation loss, mean ± std over the seeds."""
    loss = results["final_validation_loss"]
    return (f"validation loss over {len(results['seeds'])} seeds: " + ", ".join(
        f"{name} {s['mean']:.4f} ± {s['std']:.4f}" for name, s in loss.items()) + f" {results['validation_loss_unit']}")


# ----------------------------------------------------------------------------- the BERT chapter's ablation

ABLATION_STEPS = 250
ABLATION_ARMS = {  # keyword arguments of local_attention_init; None: BERT's own initialisation
    "bert-init": None,
    "sinusoids-only": {"identity": False},
    "identity-only": {"sinusoids": False},
    "both": {},
}


def bert_ablation_run(arm: str, seed: int = 0, steps: int = ABLATION_STEPS) -> dict:
    """book-bert's data, batches and learning rate for `steps` steps from the initialisation `arm`,
    as the BERT chapter trains live (warmup 50, 16 validation batches every 50 steps); its curve."""
    from companion.bert import local_attention_init
    from companion.training import train

    if arm not in ABLATION_ARMS:
        raise ValueError(f"unknown arm {arm!r}; the arms are {', '.join(ABLATION_ARMS)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    recipe = replace(RECIPES["book-bert"], seed=seed, local_init=False)
    _, model, train_data, val_data, collate = build(recipe)  # the model drawn after manual_seed(seed)
    if ABLATION_ARMS[arm] is not None:
        local_attention_init(model, **ABLATION_ARMS[arm])
    start = time.perf_counter()
    result = train(model, train_data, eval_data=val_data, steps=steps, lr=recipe.lr,
                   batch_size=recipe.batch_size, warmup=min(50, steps), eval_every=min(50, steps),
                   eval_batches=16, collate_fn=collate, seed=seed, progress=False)
    curve = result.history.dropna(subset=["eval_loss"])
    return {"arm": arm, "seed": seed, "steps": result.step,
            "train_seconds": round(time.perf_counter() - start, 1),
            "final_validation_loss": round(float(curve.eval_loss.iloc[-1]), 4),
            "history": {"step": [int(x) for x in curve.step],
                        "eval_loss": [round(float(x), 4) for x in curve.eval_loss]}}


def bert_ablation(out: Path, *, seeds: tuple[int, ...] = (0, 1, 2), steps: int | None = None) -> dict:
    """Every arm of ABLATION_ARMS from each seed (`out`/runs/ARM-seed-S.json, kept when finished) and
    `out`/results.json with the final validation losses, mean ± std over the seeds."""
    seeds = check_run_arguments(seeds, None, None)
    steps = ABLATION_STEPS if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    out = run_folder(out)
    runs, artifacts, start = [], {}, time.perf_counter()
    for arm in ABLATION_ARMS:
        for seed in seeds:
            name = f"runs/{arm}-seed-{seed}.json"
            done = json.loads((out / name).read_text()) if (out / name).exists() else None
            if done is None or done["steps"] != steps:
                print(f"{arm}, seed {seed}: training", flush=True)
                done = bert_ablation_run(arm, seed, steps)
                (out / "runs").mkdir(exist_ok=True)
                (out / name).write_text(json.dumps(done, indent=1) + "\n")
            runs.append(done)
            artifacts[name] = sha256(out / name)
    results = {
        "key": BERT_ABLATION, "recipe": asdict(RECIPES["book-bert"]), "steps": steps, "seeds": seeds,
        "arms": ABLATION_ARMS, "validation_loss_unit": "nats per masked character",
        "final_validation_loss": {arm: seed_summary([r["final_validation_loss"] for r in runs
                                                     if r["arm"] == arm]) for arm in ABLATION_ARMS},
        "train_seconds": round(sum(r["train_seconds"] for r in runs), 1),
        "artifacts": artifacts, "wall_seconds": round(time.perf_counter() - start, 1), **environment(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def bert_ablation_headline(results: dict) -> str:
    """One line: each arm's final validation loss, mean ± std over the seeds."""
    loss = results["final_validation_loss"]
    return (f"validation loss after {results['steps']} steps over {len(results['seeds'])} seeds: "
            + ", ".join(f"{arm} {s['mean']:.4f} ± {s['std']:.4f}" for arm, s in loss.items()))


# ----------------------------------------------------------------------------- polarity fine-tuning

SEEDS = (0, 1, 2)
SEARCH_SEED = 0


@dataclass(frozen=True)
class PolarityRecipe:
    """A fine-tuning experiment on Pang & Lee polarity: one configuration over seeds, or a search."""

    key: str
    config: FinetuneConfig | None = None  # the final configuration (None: a search)
    grid: tuple[FinetuneConfig, ...] = ()  # a search: the candidates, compared on validation
    seeds: tuple[int, ...] = SEEDS
    chosen_on: str = ""  # where the hyperparameters of `config` come from
    ship_weights: bool = False  # LoRA: ship the adapters and heads (small); full: probabilities only


def _full(**kw) -> FinetuneConfig:
    """MiniLM, every weight trained, 4 epochs, the best epoch on validation kept."""
    return FinetuneConfig(method="full", epochs=4, **kw)


def _lora(**kw) -> FinetuneConfig:
    """MiniLM with LoRA (r=8) on every linear layer, 6 epochs, the best epoch on validation kept."""
    return FinetuneConfig(method="lora", epochs=6, head_lr=1e-3, **kw)


SEARCH_GRID = (
    # full fine-tuning: encoder learning rate, with and without LP-FT's probe-initialised head
    *(_full(lr=lr, probe_init=probe) for probe in (False, True) for lr in (5e-5, 1e-4, 2e-4)),
    # LoRA: learning rate of the low-rank matrices, with and without LP-FT's head
    *(_lora(lr=lr, probe_init=probe) for probe in (False, True) for lr in (5e-4, 1e-3, 2e-3)),
)
CHOSEN = "validation accuracy of seed 0 in polarity-search (results/polarity-search/results.json)"
POLARITY_RECIPES = {
    r.key: r
    for r in [
        PolarityRecipe("polarity-search", grid=SEARCH_GRID, seeds=(SEARCH_SEED,),
                       chosen_on="validation split only (the test split is not read)"),
        # the plain recipe of issue 13, as a baseline: no search, 3 epochs, the last weights kept
        PolarityRecipe("polarity-plain", FinetuneConfig(method="full", lr=5e-5, head_lr=1e-3, epochs=3,
                                                        select="last", group_by_length=False),
                       chosen_on="not searched: the common defaults (lr 5e-5 encoder / 1e-3 head, "
                                 "3 epochs, last epoch), a baseline"),
        PolarityRecipe("polarity-full", _full(lr=2e-4, probe_init=True), chosen_on=CHOSEN),
        PolarityRecipe("polarity-lora", _lora(lr=5e-4), chosen_on=CHOSEN, ship_weights=True),
        PolarityRecipe("polarity-decoder", FinetuneConfig(method="decoder-lora", model=SMOLLM2, lr=1e-3,
                                                          epochs=2, lora_r=4, lora_alpha=8),
                       chosen_on="not searched: the MiniLM LoRA learning rate, 2 epochs (CPU budget), "
                                 "rank 4 (adapter under 5 MB)", ship_weights=True),
    ]
}


def _polarity_data(tokenizer, max_length: int, subset: int | None) -> dict[str, list[dict]]:
    """The encoded splits of load_polarity() (the first `subset` sentences of each: tests)."""
    from companion.corpora import load_polarity

    polarity = load_polarity()
    data = {}
    for split in ("train", "validation", "test"):
        rows = polarity[split] if subset is None else polarity[split].select(range(min(subset, len(polarity[split]))))
        data[split] = encode(tokenizer, rows["text"], rows["label"], max_length)
    return data


def _one_run(config: FinetuneConfig, seed: int, data: dict, device, *, max_steps: int | None,
             score_test: bool, desc: str):
    """Build, train and evaluate one configuration with one seed: (model, figures)."""
    model, _ = build_classifier(config, seed)
    result = train_classifier(model, data["train"], data["validation"], config, seed, max_steps=max_steps,
                              device=device, desc=desc)
    trainable, total = trainable_parameters(model)
    val = evaluate(model, data["validation"])
    figures = {"seed": seed, "validation_accuracy": val.accuracy, "validation_loss": round(val.loss, 6),
               "steps": result.steps, "epochs": result.epochs, "best_epoch": result.best_epoch,
               "tokens": result.tokens, "train_seconds": round(result.seconds, 1),
               "trainable_parameters": trainable, "total_parameters": total, "history": result.history}
    if result.probe_accuracy is not None:
        figures["probe_train_accuracy"] = result.probe_accuracy
    if score_test:
        test = evaluate(model, data["test"])
        figures |= {"test_accuracy": test.accuracy, "test_loss": round(test.loss, 6),
                    "test_probabilities": [round(float(p), 6) for p in test.probabilities[:, 1]]}
    return model, figures


def run_polarity(recipe: PolarityRecipe, out: Path, *, max_steps: int | None = None,
                 subset: int | None = None, seeds: tuple[int, ...] | None = None) -> dict:
    """Run a polarity recipe over its seeds and write `out`/results.json (+ adapters of LoRA runs).
    `max_steps`, `subset` (sentences per split) and `seeds` shorten it (tests, quick checks)."""
    from transformers import AutoTokenizer

    import companion

    if is_shipped(out):
        raise ValueError(f"{out} is inside {RESULTS}, where the shipped results live: write the run "
                         "elsewhere, then replace a shipped copy with install() (python -m companion.recipes "
                         "KEY --replace-shipped)")
    seeds = tuple(seeds if seeds is not None else recipe.seeds)
    if not seeds:
        raise ValueError("no seeds to run")
    device = companion.pick_device()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    figures = {"recipe": recipe.key, "task": "Pang & Lee sentence polarity (companion.corpora.load_polarity)",
               "full_run": max_steps is None and subset is None and seeds == recipe.seeds,
               "max_steps": max_steps, "subset": subset, "seeds": list(seeds),
               "hyperparameters_chosen_on": recipe.chosen_on}
    if recipe.config is None:  # a search: every candidate, validation only
        candidates, cache = [], {}
        for i, config in enumerate(recipe.grid):
            if (config.model, config.max_length) not in cache:
                tokenizer = AutoTokenizer.from_pretrained(config.model)
                cache[config.model, config.max_length] = _polarity_data(tokenizer, config.max_length, subset)
            data = cache[config.model, config.max_length]
            runs = []
            for seed in seeds:
                part = out / f".candidate-{i}-seed-{seed}.json"
                key = {"config": asdict(config), "max_steps": max_steps, "subset": subset, "seed": seed}
                saved = _finished_part(part, out, key)
                if saved is None:
                    desc = (f"{i + 1}/{len(recipe.grid)} {config.method} lr {config.lr:g}"
                            f"{' LP-FT' if config.probe_init else ''}")
                    run = _one_run(config, seed, data, device, max_steps=max_steps, score_test=False,
                                   desc=desc)[1]
                    saved = _save_part(part, key, run, {})
                runs.append(saved["run"])
            candidates.append({"config": asdict(config), "runs": runs,
                               "validation_accuracy": seed_summary([r["validation_accuracy"] for r in runs])})
        chosen = {}
        for method in dict.fromkeys(c["config"]["method"] for c in candidates):
            mine = [c for c in candidates if c["config"]["method"] == method]
            best = max(mine, key=lambda c: c["validation_accuracy"]["mean"])  # ties: the first in the grid
            chosen[method] = best["config"]
        figures |= {"split_sizes": {k: len(v) for k, v in data.items() if k != "test"},
                    "selection": "highest mean validation accuracy (best epoch of each run); ties: first "
                                 "in grid order", "candidates": candidates, "chosen": chosen}
    else:
        config = recipe.config
        tokenizer = AutoTokenizer.from_pretrained(config.model)
        data = _polarity_data(tokenizer, config.max_length, subset)
        runs, artifacts, resumed = [], {}, []
        for seed in seeds:
            part = out / f".seed-{seed}.json"  # this seed's figures, until results.json is written
            saved = _finished_part(part, out, {"config": asdict(config), "max_steps": max_steps,
                                               "subset": subset, "seed": seed})
            if saved is None:
                model, run_figures = _one_run(config, seed, data, device, max_steps=max_steps,
                                              score_test=True, desc=f"{recipe.key} seed {seed}")
                seed_artifacts = {}
                if recipe.ship_weights:
                    for path in save_adapter(model, out / f"seed-{seed}"):
                        seed_artifacts[str(path.relative_to(out))] = sha256(path)
                del model
                saved = _save_part(part, {"config": asdict(config), "max_steps": max_steps, "subset": subset,
                                          "seed": seed}, run_figures, seed_artifacts)
            else:
                resumed.append(seed)
            runs.append(saved["run"])
            artifacts |= saved["artifacts"]
        metrics = {name: seed_summary([r[name] for r in runs])
                   for name in ("test_accuracy", "validation_accuracy", "test_loss", "best_epoch",
                                "train_seconds")}
        figures |= {"config": asdict(config), "split_sizes": {k: len(v) for k, v in data.items()},
                    "metrics": metrics, "trainable_parameters": runs[0]["trainable_parameters"],
                    "total_parameters": runs[0]["total_parameters"],
                    "trainable_fraction": runs[0]["trainable_parameters"] / runs[0]["total_parameters"],
                    "steps": runs[0]["steps"], "epochs": runs[0]["epochs"],
                    "tokens": [r["tokens"] for r in runs], "runs": runs,
                    "weights": "adapters and heads in seed-*/ (peft save_pretrained + head.safetensors)"
                               if recipe.ship_weights else
                               "not shipped (a full MiniLM is ~90 MB): each run's test probabilities are "
                               "in runs[*].test_probabilities",
                    "artifacts": artifacts}
    figures |= {"wall_seconds": round(time.perf_counter() - start, 1), **environment(device)}
    if recipe.config is not None:
        figures["resumed_seeds"] = resumed  # finished by an earlier, interrupted call
    (out / "results.json").write_text(json.dumps(figures, indent=1) + "\n")
    if figures["full_run"]:  # a shortened call keeps its parts: the full call resumes them
        for part in out.glob(".*seed-*.json"):
            part.unlink()
    return figures


def _save_part(path: Path, key: dict, run: dict, artifacts: dict) -> dict:
    """Write one finished run (seed or search candidate) beside the results, atomically."""
    part = {"key": key, "run": run, "artifacts": artifacts}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(part) + "\n")
    tmp.replace(path)
    return part


def _finished_part(path: Path, out: Path, key: dict) -> dict | None:
    """A run an interrupted call finished with the same configuration, its files intact; else None."""
    if not path.exists():
        return None
    part = json.loads(path.read_text())
    intact = all((out / name).exists() and sha256(out / name) == digest
                 for name, digest in part["artifacts"].items())
    return part if part["key"] == json.loads(json.dumps(key)) and intact else None


def shipped_results(key: str, folder: Path | None = None) -> dict:
    """The results.json of recipe `key` (default: the shipped copy in companion/results/KEY), every
    artifact's sha256 checked against it."""
    return verified_results(Path(folder) if folder is not None else RESULTS / key, key)


def shipped_adapter(key: str, seed: int, folder: Path | None = None):
    """The LoRA classifier of one seed of a polarity recipe (checked against results.json), eval mode."""
    from companion.finetune import load_adapter

    folder = Path(folder) if folder is not None else RESULTS / key
    results = shipped_results(key, folder)
    if f"seed-{seed}/adapter_config.json" not in results.get("artifacts", {}):
        raise ValueError(f"{key} ships no adapter for seed {seed} (seeds {results['seeds']})")
    return load_adapter(folder / f"seed-{seed}", FinetuneConfig(**results["config"]))


def _check_recipe_args(parser: argparse.ArgumentParser, args: argparse.Namespace, why: str) -> None:
    """Refuse --steps (these recipes run whole epochs: `why`) and a partial run with --replace-shipped."""
    if args.steps is not None:
        parser.error(f"{args.key} {why}: use --max-steps N to cut a quick check short")
    if args.replace_shipped and (args.max_steps, args.subset, args.seeds) != (None, None, None):
        parser.error("--replace-shipped ships the recipe's full run: drop --max-steps, --subset and --seeds")


def _polarity_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for a polarity recipe: run it into runs/KEY (or --out), print its headline."""
    import companion

    recipe = POLARITY_RECIPES[args.key]
    out = args.out or RUNS / recipe.key
    _check_recipe_args(parser, args, "runs whole epochs")
    companion.setup()
    print(f"writing {out.resolve()}")
    seeds = tuple(args.seeds) if args.seeds is not None else None
    figures = run_polarity(recipe, out, max_steps=args.max_steps, subset=args.subset, seeds=seeds)
    if recipe.config is None:
        for c in figures["candidates"]:
            config = c["config"]
            print(f"{config['method']:>5} lr {config['lr']:g} probe_init {config['probe_init']!s:5}: "
                  f"validation accuracy {c['validation_accuracy']['mean']:.4f}")
        print("chosen:", json.dumps(figures["chosen"]))
    else:
        test = figures["metrics"]["test_accuracy"]
        print(f"test accuracy {test['mean']:.4f} ± {test['std']:.4f} over seeds {figures['seeds']}: "
              f"{test['values']}; {figures['trainable_parameters']:,} parameters trained "
              f"({figures['trainable_fraction']:.2%})")
    print(f"wrote {(out / 'results.json').resolve()} in {figures['wall_seconds']:.0f} s ({figures['device']})")
    if args.replace_shipped:
        print(f"replaced {install(out, recipe.key)}")
    return 0


def _reviews_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for reviews-zh (companion.reviews): runs/reviews-zh (or --out), one thread."""
    from companion.reviews import headline, run_reviews

    _check_recipe_args(parser, args, "stops early on its own")
    seeds = tuple(args.seeds) if args.seeds is not None else (0, 1, 2)
    return _run_one_thread(args, lambda out: run_reviews(out, max_steps=args.max_steps, subset=args.subset,
                                                         seeds=seeds), headline)


def _neural_lm_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for neural-lm-zh (companion.neural_lm): runs/neural-lm-zh (or --out), one thread."""
    from companion.neural_lm import headline, run_recipe

    _check_recipe_args(parser, args, "runs whole epochs")
    seeds = tuple(args.seeds) if args.seeds is not None else (0, 1, 2)
    return _run_one_thread(args, lambda out: run_recipe(out, max_steps=args.max_steps, subset=args.subset,
                                                        seeds=seeds), headline)


def _run_one_thread(args: argparse.Namespace, run_recipe, headline, threads: int = 1) -> int:
    """Run a recipe on one thread (as the shipped runs were; `threads` for one that measures speed)
    into runs/KEY or --out; print its headline; replace the shipped copy with --replace-shipped."""
    import companion

    companion.setup(threads=threads)  # one thread: a busy 2-core machine, reproducible sums
    out = args.out or RUNS / args.key
    print(f"writing {out.resolve()}")
    r = run_recipe(out)
    print(headline(r))
    print(f"wrote {(out / 'results.json').resolve()} in {r['wall_seconds']:.0f} s ({r['device']})")
    if args.replace_shipped:
        print(f"replaced {install(out, args.key)}")
    return 0


def _gpt_choice_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for book-gpt-choice: both book-gpt recipes, each seed, runs/book-gpt-choice (or --out)."""
    if (args.max_steps, args.subset) != (None, None):
        parser.error(f"{args.key} takes --steps (a quick check) and --seeds, not --max-steps or --subset")
    if args.replace_shipped and args.steps is not None:
        parser.error("--replace-shipped ships the recipes' full runs: drop --steps")
    seeds = tuple(args.seeds) if args.seeds is not None else (0, 1, 2)
    return _run_one_thread(args, lambda out: gpt_choice(out, seeds=seeds, steps=args.steps), gpt_choice_headline)


def _bert_ablation_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for bert-ablation: every arm from each seed, runs/bert-ablation (or --out)."""
    if (args.max_steps, args.subset) != (None, None):
        parser.error(f"{args.key} takes --steps (a quick check) and --seeds, not --max-steps or --subset")
    if args.replace_shipped and args.steps is not None:
        parser.error("--replace-shipped ships the full runs: drop --steps")
    seeds = tuple(args.seeds) if args.seeds is not None else (0, 1, 2)
    return _run_one_thread(args, lambda out: bert_ablation(out, seeds=seeds, steps=args.steps),
                           bert_ablation_headline)


def _peft_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for peft-compare (companion.peft_compare): every method, runs/peft-compare (or --out)."""
    from companion import peft_compare

    _check_recipe_args(parser, args, "runs whole epochs")
    out = args.out or RUNS / args.key
    argv = ["--out", str(out)]
    for flag, value in (("--max-steps", args.max_steps), ("--subset", args.subset)):
        argv += [flag, str(value)] if value is not None else []
    argv += ["--seeds", *map(str, args.seeds)] if args.seeds is not None else []
    code = peft_compare.main(argv)
    if args.replace_shipped:
        print(f"replaced {install(out, args.key)}")
    return code


def _tagging_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for a token-classification recipe (companion.tagging): runs/KEY (or --out), one thread."""
    from companion.tagging import headline, run_named

    _check_recipe_args(parser, args, "runs whole epochs")
    seeds = tuple(args.seeds) if args.seeds is not None else None
    return _run_one_thread(args, lambda out: run_named(args.key, out, max_steps=args.max_steps,
                                                       subset=args.subset, seeds=seeds), headline)


def _prompt_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for prompt-grid (companion.prompt_grid): runs/prompt-grid (or --out), one thread;
    --subset N (validation and test sentences) and --seeds (the demonstrations' draws) for a quick look."""
    from companion.prompt_grid import DRAWS, headline, run_grid

    if args.steps is not None or args.max_steps is not None:
        parser.error(f"{args.key} trains nothing: use --subset N (and --seeds) for a quick look")
    _check_recipe_args(parser, args, "trains nothing")
    draws = tuple(args.seeds) if args.seeds is not None else DRAWS
    return _run_one_thread(args, lambda out: run_grid(out, subset=args.subset, draws=draws), headline)


def _instruct_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for instruct (companion.instruct): SmolLM2 and book-gpt, LoRA and full, runs/instruct."""
    from companion.instruct import headline, run_recipe

    _check_recipe_args(parser, args, "runs whole epochs")
    seeds = tuple(args.seeds) if args.seeds is not None else (0, 1, 2)
    return _run_one_thread(args, lambda out: run_recipe(out, seeds=seeds, max_steps=args.max_steps,
                                                        eval_per_task=args.subset), headline)


def _codegen_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for codegen (companion.codegen): HumanEval with SmolLM2, runs/codegen, one thread;
    --subset N (the first N problems) for a quick look."""
    from companion.codegen import headline, run_recipe

    if (args.steps, args.max_steps, args.seeds) != (None, None, None):
        parser.error(f"{args.key} trains nothing: use --subset N (the first N problems) for a quick look")
    _check_recipe_args(parser, args, "trains nothing")
    return _run_one_thread(args, lambda out: run_recipe(out, subset=args.subset), headline)


def _rag_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for rag (companion.rag): the retrieval assistant, runs/rag (or --out), one thread;
    --subset N (N ChatterBot questions per language) for a quick look."""
    from companion.rag import headline, run_recipe

    if (args.steps, args.max_steps, args.seeds) != (None, None, None):
        parser.error(f"{args.key} trains nothing: use --subset N (questions per language) for a quick look")
    _check_recipe_args(parser, args, "trains nothing")
    per_language = {"english": args.subset, "chinese": args.subset} if args.subset else None
    return _run_one_thread(args, lambda out: run_recipe(out, per_language=per_language), headline)


def _triples_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for triples (companion.triples): patterns, tagger (3 seeds) and SmolLM2,
    runs/triples (or --out), one thread; --seeds for a quick look."""
    from companion.triples import headline, run_recipe

    if (args.steps, args.max_steps, args.subset) != (None, None, None):
        parser.error(f"{args.key} takes only --seeds (the tagger's) for a quick look")
    _check_recipe_args(parser, args, "trains whole epochs")
    seeds = tuple(args.seeds) if args.seeds is not None else (0, 1, 2)
    return _run_one_thread(args, lambda out: run_recipe(out, seeds=seeds), headline)


COMPRESSION_MODULES = {DISTILL: "companion.distill", PRUNE: "companion.prune",
                       ADVERSARIAL: "companion.adversarial_recipe", CONTINUAL: "companion.continual_recipe",
                       DRAFT: "companion.draft_recipe"}


def _compression_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command for distill (companion.distill), prune-recover (companion.prune), adversarial
    (companion.adversarial_recipe), continual (companion.continual_recipe) and draft
    (companion.draft_recipe): 3 seeds, runs/KEY (or --out), one thread (draft: two, since it times
    decoding as the chapters do); --subset N (examples per split) and --seeds for a quick look."""
    from importlib import import_module

    module = import_module(COMPRESSION_MODULES[args.key])
    if (args.steps, args.max_steps) != (None, None):
        parser.error(f"{args.key} trains whole epochs: use --subset N and --seeds for a quick look")
    _check_recipe_args(parser, args, "trains whole epochs")
    seeds = tuple(args.seeds) if args.seeds is not None else (0, 1, 2)
    return _run_one_thread(args, lambda out: module.run_recipe(out, seeds=seeds, subset=args.subset),
                           module.headline, threads=2 if args.key == DRAFT else 1)


def bert_standard_init() -> Recipe:
    """book-bert with BERT's standard initialisation, evaluated every 100 steps (no local init)."""
    return replace(RECIPES["book-bert"], key=BERT_STANDARD, local_init=False, eval_every=100)


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m companion.recipes KEY [--steps N] [--out DIR] [--replace-shipped]."""
    import companion

    parser = argparse.ArgumentParser(prog="python -m companion.recipes", description=__doc__.split("\n")[0])
    parser.add_argument("key", choices=sorted(RECIPES) + sorted(POLARITY_RECIPES) + sorted(TAGGING_RECIPES)
                        + [REVIEWS, PEFT, BERT_STANDARD, NEURAL_LM, GPT_CHOICE, BERT_ABLATION, "prompt-grid", INSTRUCT,
                                    RAG, CODEGEN, TRIPLES, DISTILL, PRUNE, ADVERSARIAL, CONTINUAL, DRAFT])
    parser.add_argument("--steps", type=int, help="override the recipe's number of steps (book-gpt, book-bert, book-gpt-choice)")
    parser.add_argument("--max-steps", type=int, help="polarity: stop each run after N steps (a quick check)")
    parser.add_argument("--subset", type=int, help="polarity: use the first N sentences of each split")
    parser.add_argument("--seeds", type=int, nargs="+", help="polarity: these seeds instead of the recipe's")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/KEY under the current folder; "
                        "never inside companion/checkpoints or companion/results)")
    parser.add_argument("--replace-shipped", action="store_true",
                        help="maintainers: after the full run, replace companion/checkpoints/KEY (or "
                             "companion/results/KEY) by it (checkpoints: then run "
                             "python tools/register_checkpoints.py)")
    args = parser.parse_args(argv)
    out = args.out or RUNS / args.key
    if is_shipped(out):
        root, what = (RESULTS, "results") if is_shipped_result(out) else (CHECKPOINTS, "checkpoints")
        parser.error(f"--out {out} is inside {root}, where the shipped {what} live: pass another folder; "
                     "to refresh a shipped copy, add --replace-shipped without --out")
    if args.key in POLARITY_RECIPES:
        return _polarity_main(parser, args)
    if args.key in TAGGING_RECIPES:
        return _tagging_main(parser, args)
    if args.key == REVIEWS:
        return _reviews_main(parser, args)
    if args.key == NEURAL_LM:
        return _neural_lm_main(parser, args)
    if args.key == PEFT:
        return _peft_main(parser, args)
    if args.key == "prompt-grid":
        return _prompt_main(parser, args)
    if args.key == GPT_CHOICE:
        return _gpt_choice_main(parser, args)
    if args.key == BERT_ABLATION:
        return _bert_ablation_main(parser, args)
    if args.key == INSTRUCT:
        return _instruct_main(parser, args)
    if args.key == RAG:
        return _rag_main(parser, args)
    if args.key == TRIPLES:
        return _triples_main(parser, args)
    if args.key == CODEGEN:
        return _codegen_main(parser, args)
    if args.key in COMPRESSION_MODULES:
        return _compression_main(parser, args)
    if (args.max_steps, args.subset, args.seeds) != (None, None, None):
        parser.error("--max-steps, --subset and --seeds are for the polarity recipes: use --steps")
    recipe = bert_standard_init() if args.key == BERT_STANDARD else RECIPES[args.key]
    if args.replace_shipped and args.steps not in (None, recipe.steps):
        parser.error(f"--replace-shipped ships the recipe's full run ({recipe.steps} steps): drop --steps")
    companion.setup()
    print(f"writing {out.resolve()}")
    figures = run(recipe, out, steps=args.steps, save_model=args.key in RECIPES)  # bert-standard-init: curve only
    print(json.dumps({k: v for k, v in figures.items() if k != "history"}, indent=1))
    print(f"wrote {out.resolve()}; validation loss {figures['final_validation_loss']:.4f} "
          f"({math.exp(figures['final_validation_loss']):.2f} perplexity)")
    if args.replace_shipped:
        dest = install(out, recipe.key)
        print(f"replaced {dest}" + (": now run python tools/register_checkpoints.py" if args.key in RECIPES
                                    else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
