"""The recipes behind the book's small pre-trained checkpoints, and the command that reruns them.

    python -m companion.recipes book-gpt            # the byte-level GPT of the GPT chapter, into runs/book-gpt
    python -m companion.recipes book-bert           # the character-level BERT of the BERT chapter, run longer
    python -m companion.recipes book-bert --steps 50 --out /tmp/bert   # a quick check elsewhere
    python -m companion.recipes book-gpt --replace-shipped   # maintainers: refresh the shipped copy

Each run trains with `companion.training.train` on the movie-review corpus and writes a plain
Hugging Face folder (`config.json`, `model.safetensors`, the tokenizer, `recipe.json` with the
figures of the run) that `AutoModelForCausalLM` / `AutoModelForMaskedLM` / `AutoTokenizer` load.
By default it writes into `runs/<key>` under the current folder; it never writes into
`companion/checkpoints`, where the registry (`companion.resources`) finds the shipped copies by
name, and refuses an `--out` there. Maintainers replace a shipped copy explicitly:
`--replace-shipped` runs the full recipe into `runs/<key>` (or `--out`), then swaps the folder into
`companion/checkpoints/<key>`; `python tools/register_checkpoints.py` then records its new sha256
sums and figures in the registry.
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

from companion.resources import CHECKPOINTS

EOT = "<|endoftext|>"
RUNS = Path("runs")  # the command's default output: runs/<key> under the current folder


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
        # The GPT chapter trains exactly this model for 500 steps.
        Recipe("book-gpt", "clm", block_size=128, n_layer=4, n_head=4, n_embd=128,
               steps=4000, batch_size=16, lr=2e-3, warmup=100),
        # The BERT chapter trains this model for 500 steps.
        Recipe("book-bert", "mlm", block_size=64, n_layer=4, n_head=4, n_embd=128,
               steps=4000, batch_size=32, lr=1e-3, warmup=100, local_init=True),
    ]
}


# ----------------------------------------------------------------------------- tokenizers

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte (what byte-level BPE's vocabulary uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def byte_tokenizer():
    """A `transformers` tokenizer equal to `ByteTokenizer(specials=("<|endoftext|>",))`: id = byte value."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
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
    """Whether `path` is inside companion/checkpoints, where the shipped checkpoints live."""
    return Path(path).resolve().is_relative_to(CHECKPOINTS.resolve())


def install(folder: Path, key: str) -> Path:
    """Replace the shipped checkpoint `key` by the run in `folder` (a maintainer's explicit step)."""
    dest = CHECKPOINTS / key
    new, old = dest.with_name(f".{key}.new"), dest.with_name(f".{key}.old")
    for leftover in (new, old):  # from an interrupted install
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(folder, new)
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def run(recipe: Recipe, out: Path, *, steps: int | None = None) -> dict:
    """Train `recipe` (optionally for another number of steps) and write its folder to `out`."""
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
    hf = to_hf_gpt2(model) if recipe.objective == "clm" else to_hf_bert(model)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "recipe.json").write_text(json.dumps(figures, indent=1) + "\n")
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m companion.recipes KEY [--steps N] [--out DIR] [--replace-shipped]."""
    import companion

    parser = argparse.ArgumentParser(prog="python -m companion.recipes", description=__doc__.split("\n")[0])
    parser.add_argument("key", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, help="override the recipe's number of steps")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/KEY under the current folder; "
                        "never inside companion/checkpoints)")
    parser.add_argument("--replace-shipped", action="store_true",
                        help="maintainers: after the full run, replace companion/checkpoints/KEY by it "
                             "(then run python tools/register_checkpoints.py)")
    args = parser.parse_args(argv)
    recipe = RECIPES[args.key]
    out = args.out or RUNS / recipe.key
    if is_shipped(out):
        parser.error(f"--out {out} is inside {CHECKPOINTS}, where the shipped checkpoints live: pass "
                     "another folder; to refresh a shipped checkpoint, add --replace-shipped without --out")
    if args.replace_shipped and args.steps not in (None, recipe.steps):
        parser.error(f"--replace-shipped ships the recipe's full run ({recipe.steps} steps): drop --steps")
    companion.setup()
    print(f"writing {out.resolve()}")
    figures = run(recipe, out, steps=args.steps)
    print(json.dumps({k: v for k, v in figures.items() if k != "history"}, indent=1))
    print(f"wrote {out.resolve()}; validation loss {figures['final_validation_loss']:.4f} "
          f"({math.exp(figures['final_validation_loss']):.2f} perplexity)")
    if args.replace_shipped:
        print(f"replaced {install(out, recipe.key)}: now run python tools/register_checkpoints.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
