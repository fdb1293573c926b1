"""The `adversarial` recipe: the polarity classifier fine-tuned clean, with FGM and with PGD, attacked.

Every arm trains polarity-lora's configuration (MiniLM, LoRA r=8 on every linear layer, its
learning rates, the best epoch on validation kept) for 2 epochs instead of 6, so that the 11 runs
fit in under 2 hours on 2 cores, with `train_adversarial`, which is
`finetune.train_classifier`'s loop plus, after each clean backward, `robust.fgm_step` or
`robust.pgd_step` on the word-embedding matrix. LoRA leaves that matrix frozen: the perturbation
is of the input only, and its gradient costs one more forward and backward (see companion.robust).

The training radius eps of FGM and PGD is chosen on validation with the first seed: the eps with
the best mean of clean validation accuracy and validation accuracy under the embedding attack.
Test is scored once per arm and seed: clean, under the embedding attack (`attack_eps`, fixed in
advance: the robustness chapter's) and under the character attack (`budget` words).

>>> results = run_recipe(Path("runs/adversarial"), seeds=(0, 1, 2))
>>> print(headline(results))
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torch import nn

KEY = "adversarial"
ARMS = ("clean", "fgm", "pgd")
RESULTS_FOLDER = Path(__file__).resolve().parent / "results" / KEY  # the shipped results and adapters


@dataclass(frozen=True)
class AdversarialConfig:
    """The recipe's settings besides polarity-lora's fine-tuning configuration."""

    eps_grid: tuple[float, ...] = (0.3, 1.0)  # training radius on the embedding matrix (searched)
    pgd_steps: int = 3
    pgd_alpha: float = 0.3  # PGD's step size as a fraction of eps
    attack_eps: float = 0.1  # embedding attack: L2 radius per sentence (the chapter's middle value)
    attack_steps: int = 5  # its PGD steps, each of size attack_eps / 2
    budget: int = 3  # character attack: words edited at most
    attack_sentences: int | None = None  # character attack on the first N test sentences (None: all)
    epochs: int | None = 2  # None: polarity-lora's 6 (2 keeps the 11 runs under 2 h on 2 cores)

    def __post_init__(self) -> None:
        if not self.eps_grid or any(not e > 0 for e in self.eps_grid):
            raise ValueError(f"eps_grid must hold radii > 0, got {self.eps_grid!r}")
        for name in ("pgd_steps", "attack_steps", "budget"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.pgd_alpha > 0 and self.attack_eps > 0):
            raise ValueError("pgd_alpha and attack_eps must be > 0")
        if self.attack_sentences is not None and self.attack_sentences < 1:
            raise ValueError(f"attack_sentences must be >= 1 or None, got {self.attack_sentences!r}")


def train_adversarial(model: nn.Module, train: Sequence[dict], validation: Sequence[dict], config,
                      *, arm: str = "clean", eps: float = 1.0, pgd_steps: int = 3, pgd_alpha: float = 0.3,
                      seed: int = 0, max_steps: int | None = None, desc: str | None = None):
    """`finetune.train_classifier` (same batches, schedule and selection; arm "clean" is that
    function step for step) with an FGM or PGD step after every clean backward."""
    from companion.finetune import train_classifier
    from companion.robust import fgm_step, pgd_step

    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: use one of {', '.join(ARMS)}")
    if len(train) == 0 or len(validation) == 0:
        raise ValueError("train and validation data must not be empty")
    if config.probe_init:
        raise ValueError("train_adversarial does not do LP-FT: use a config with probe_init=False")
    adversarial = {"clean": None,
                   "fgm": lambda model, batch: fgm_step(model, batch, eps),
                   "pgd": lambda model, batch: pgd_step(model, batch, eps, pgd_alpha * eps, pgd_steps)}[arm]
    return train_classifier(model, train, validation, config, seed, max_steps=max_steps,
                            desc=desc or f"{arm} seed {seed}", after_backward=adversarial)


def run_recipe(out: Path, *, seeds: Sequence[int] = (0, 1, 2), subset: int | None = None,
               config: AdversarialConfig = AdversarialConfig()) -> dict:
    """Train the three arms (eps of FGM and PGD chosen on validation with the first seed), score
    each arm and seed once on test, clean and under both attacks. Writes results.json and the
    first seed's adapters into `out`."""
    from transformers import AutoTokenizer

    from companion.corpora import load_polarity
    from companion.finetune import build_classifier, config_from_dict, evaluate, save_adapter
    from companion.provenance import check_run_arguments, environment, seed_summary
    from companion.prune import polarity_data
    from companion.recipes import run_folder, shipped_results
    from companion.resources import sha256
    from companion.robust import attack_success_rate, classifier_proba, embedding_attack_data

    seeds = check_run_arguments(seeds, None, subset)
    out = run_folder(out)
    wall = time.perf_counter()
    finetune = config_from_dict(shipped_results("polarity-lora")["config"])
    if config.epochs is not None:
        finetune = replace(finetune, epochs=config.epochs)
    data = polarity_data(subset)
    test = load_polarity()["test"]
    n_attacked = min(len(data["test"]), config.attack_sentences or len(data["test"]))
    texts, labels = test["text"][:n_attacked], test["label"][:n_attacked]
    tokenizer = AutoTokenizer.from_pretrained(finetune.model)
    attack = dict(eps=config.attack_eps, steps=config.attack_steps, alpha=config.attack_eps / 2)

    def one(arm: str, eps: float, seed: int) -> tuple[nn.Module, dict]:
        model, _ = build_classifier(finetune, seed)
        result = train_adversarial(model, data["train"], data["validation"], finetune, arm=arm, eps=eps,
                                   pgd_steps=config.pgd_steps, pgd_alpha=config.pgd_alpha, seed=seed,
                                   desc=f"{arm} eps={eps:g} seed {seed}")
        clean = evaluate(model, data["validation"]).accuracy
        attacked = embedding_attack_data(model, data["validation"], **attack).accuracy
        return model, {"train_seconds": round(result.seconds, 1), "best_epoch": result.best_epoch,
                       "history": result.history, "validation_accuracy": clean,
                       "validation_embedding_attack_accuracy": attacked}

    first, arms, artifacts = seeds[0], {}, {}
    for arm in ARMS:
        grid = (0.0,) if arm == "clean" else config.eps_grid
        search = {eps: one(arm, eps, first) for eps in grid}

        def score(eps: float) -> float:
            run = search[eps][1]
            return (run["validation_accuracy"] + run["validation_embedding_attack_accuracy"]) / 2
        chosen = max(grid, key=lambda e: (score(e), -e))
        runs = []
        for seed in seeds:
            model, run = search[chosen] if seed == first else one(arm, chosen, seed)
            start = time.perf_counter()
            proba = classifier_proba(model, tokenizer, finetune.max_length)
            characters = attack_success_rate(texts, labels, proba, budget=config.budget, seed=0)
            embedding = embedding_attack_data(model, data["test"], **attack)
            run |= {"seed": seed, "test_accuracy": evaluate(model, data["test"]).accuracy,
                    "test_embedding_attack_accuracy": embedding.accuracy,
                    "test_character_attack_accuracy": characters.accuracy,
                    "character_attack_success_rate": characters.success_rate,
                    "attack_seconds": round(time.perf_counter() - start, 1)}
            runs.append(run)
            if seed == first:
                for path in save_adapter(model, out / arm / f"seed-{seed}"):
                    artifacts[str(path.relative_to(out))] = sha256(path)
        metrics = ("validation_accuracy", "validation_embedding_attack_accuracy", "test_accuracy",
                   "test_embedding_attack_accuracy", "test_character_attack_accuracy",
                   "character_attack_success_rate")
        arms[arm] = {"eps": None if arm == "clean" else chosen,
                     "eps_search": {str(e): {"validation_accuracy": search[e][1]["validation_accuracy"],
                                             "validation_embedding_attack_accuracy":
                                                 search[e][1]["validation_embedding_attack_accuracy"],
                                             "score": score(e)} for e in grid if arm != "clean"},
                     **{m: seed_summary([r[m] for r in runs]) for m in metrics}, "runs": runs}
        print(_line(arm, arms[arm], len(seeds)), flush=True)
    results = {
        "key": KEY, "task": "Pang & Lee sentence polarity (companion.corpora.load_polarity)",
        "full_run": subset is None, "subset": subset, "seeds": seeds,
        "config": asdict(config), "finetune_config": asdict(finetune),
        "model": "all-MiniLM-L6-v2 with LoRA r=8 on every linear layer (polarity-lora's configuration); "
                 "the word embeddings stay frozen, FGM and PGD perturb the model's input through them",
        "protocol": "eps of fgm and pgd chosen with the first seed on the mean of clean validation accuracy "
                    "and validation accuracy under the embedding attack (ties: the smaller eps); each run "
                    "keeps its best epoch on clean validation accuracy; test scored once per arm and seed: "
                    f"clean, embedding attack (eps {config.attack_eps}, {config.attack_steps} steps), "
                    f"character attack (budget {config.budget}, seed 0) on the first {n_attacked} "
                    "test sentences",
        "split_sizes": {s: len(v) for s, v in data.items()}, "character_attack_sentences": n_attacked,
        "arms": arms, "wall_seconds": round(time.perf_counter() - wall, 1), "artifacts": artifacts,
        **environment(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


def _line(arm: str, summary: dict, n_seeds: int) -> str:
    """One arm's test numbers, mean ± std over seeds."""
    def pm(name: str) -> str:
        return f"{summary[name]['mean']:.3f} ± {summary[name]['std']:.3f}"
    eps = "" if summary["eps"] is None else f" (eps {summary['eps']:g})"
    return (f"{arm}{eps}: test accuracy {pm('test_accuracy')}, under the embedding attack "
            f"{pm('test_embedding_attack_accuracy')}, under the character attack "
            f"{pm('test_character_attack_accuracy')} ({n_seeds} seeds)")


def headline(results: dict) -> str:
    """One line per arm: clean test accuracy and accuracy under both attacks (mean ± std over seeds)."""
    return "\n".join(_line(arm, summary, len(results["seeds"])) for arm, summary in results["arms"].items())


def shipped_results(folder: Path | None = None) -> dict:
    """The shipped results.json of the recipe, every artifact's sha256 checked."""
    from companion.provenance import verified_results

    return verified_results(Path(folder) if folder is not None else RESULTS_FOLDER, KEY)


def shipped_model(arm: str, folder: Path | None = None) -> nn.Module:
    """The first seed's classifier of one arm ("clean", "fgm" or "pgd"), checked, in eval mode."""
    from companion.finetune import config_from_dict, load_adapter

    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}: use one of {', '.join(ARMS)}")
    folder = Path(folder) if folder is not None else RESULTS_FOLDER
    results = shipped_results(folder)
    seed = results["seeds"][0]
    return load_adapter(folder / arm / f"seed-{seed}", config_from_dict(results["finetune_config"]))
