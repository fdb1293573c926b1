"""The pre-training recipes and the checkpoints the book ships (companion/checkpoints)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from companion import finetune, recipes, resources
from companion.data import ByteTokenizer, CharTokenizer
from companion.resources import REGISTRY, ResourceMissing

pytestmark = pytest.mark.usefixtures("one_thread")
SHIPPED = [key for key, r in REGISTRY.items() if r.kind == "checkpoint"]
TEXTS = ["the film is good .", "  two  spaces\nand a newline\t", "我爱自然语言处理, café", "", "a" * 300]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_matches_the_companion_byte_tokenizer(text):
    hf, ours = recipes.byte_tokenizer(), ByteTokenizer(specials=(recipes.EOT,))
    assert hf(text)["input_ids"] == ours.encode(text)
    assert hf.decode(ours.encode(text)) == text
    assert len(hf) == ours.vocab_size == 257 and hf.eos_token_id == ours.special_id(recipes.EOT) == 256


def test_byte_tokenizer_keeps_endoftext_as_one_special_token():
    ids = recipes.byte_tokenizer()(f"end{recipes.EOT}start")["input_ids"]
    assert ids == [*b"end", 256, *b"start"]


@pytest.mark.parametrize("text", TEXTS[:2] + ["an unseen character: é", "<mask> in the middle"])
def test_char_tokenizer_matches_the_companion_char_tokenizer(text):
    corpus = ["the movie was good and the acting was good", "a bad film !"]
    hf = recipes.char_tokenizer(corpus)
    ours = CharTokenizer.from_text("".join(corpus), specials=CharTokenizer.BERT_SPECIALS)
    if text.startswith("<mask>"):  # the special token is one token, as in every transformers tokenizer
        assert hf(text)["input_ids"][:2] == [ours.cls_id, ours.mask_id]
        return
    assert hf(text)["input_ids"] == ours.encode(text, add_cls_sep=True)
    assert (hf.pad_token_id, hf.mask_token_id, len(hf)) == (ours.pad_id, ours.mask_id, ours.vocab_size)


def test_char_tokenizer_round_trips_known_text_and_reloads_with_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = recipes.char_tokenizer(["the movie was good"])
    assert tok.decode(tok("good movie")["input_ids"], skip_special_tokens=True) == "good movie"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("good movie")["input_ids"] == tok("good movie")["input_ids"] and again.mask_token == "<mask>"


def test_mlm_blocks_start_with_cls_and_separate_documents():
    tok = recipes.char_tokenizer(["abcdefgh"])
    blocks = recipes.mlm_blocks(tok, ["abc", "defgh"], block_size=4)
    assert blocks.shape == (3, 4) and (blocks[:, 0] == tok.cls_token_id).all()
    assert tok.decode(blocks[:, 1:].flatten()) == "abc<sep>defgh"  # the last <sep> did not fill a row


@pytest.mark.parametrize("key", sorted(recipes.RECIPES))
def test_a_short_run_of_each_recipe_writes_a_loadable_folder(key, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    figures = recipes.run(recipes.RECIPES[key], tmp_path, steps=12)
    assert figures["steps"] == 12 and figures["tokens"] == 12 * recipes.RECIPES[key].batch_size * recipes.RECIPES[key].block_size
    saved = json.loads((tmp_path / "recipe.json").read_text())
    assert saved["final_validation_loss"] == figures["final_validation_loss"]
    auto = AutoModelForCausalLM if recipes.RECIPES[key].objective == "clm" else AutoModelForMaskedLM
    model, tok = auto.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.vocab_size == len(tok)
    # 12 steps already beat a uniform guess over the vocabulary
    assert figures["final_validation_loss"] < math.log(len(tok))


def test_registry_records_each_shipped_checkpoint_and_its_recipe():
    assert sorted(SHIPPED) == sorted(recipes.RECIPES)
    for key in SHIPPED:
        r = REGISTRY[key]
        folder = resources.model_dir(key)  # hashes every file against the registry
        saved = json.loads((folder / "recipe.json").read_text())
        for name in ("steps", "tokens", "train_seconds", "device", "final_validation_loss"):
            assert r.recipe[name] == saved[name], (key, name)
        assert saved["recipe"] == {**recipes.RECIPES[key].__dict__}
        assert (folder / "model.safetensors").stat().st_size < 10 * 2**20


@pytest.mark.parametrize("key", SHIPPED)
def test_shipped_checkpoint_reproduces_its_recorded_validation_loss(key):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    recipe = recipes.RECIPES[key]
    _, _, _, val_data, collate = recipes.build(recipe)
    auto = AutoModelForCausalLM if recipe.objective == "clm" else AutoModelForMaskedLM
    model = auto.from_pretrained(resources.model_dir(key))
    loss = recipes.validation_loss(recipe, model, val_data, collate)
    assert loss == pytest.approx(REGISTRY[key].recipe["final_validation_loss"], abs=2e-3)


def test_a_corrupt_checkpoint_is_refused_with_the_command_that_remakes_it(tmp_path, monkeypatch):
    key = SHIPPED[0]
    for name in REGISTRY[key].files:
        (tmp_path / key).mkdir(exist_ok=True)
        (tmp_path / key / name).write_bytes((resources.CHECKPOINTS / key / name).read_bytes())
    (tmp_path / key / "model.safetensors").write_bytes(b"not a model")
    monkeypatch.setattr(resources, "CHECKPOINTS", tmp_path)
    with pytest.raises(ResourceMissing, match=f"python -m companion.recipes {key}"):
        resources.model_dir(key)


# --- the command line never overwrites a shipped checkpoint ------------------------------------

@pytest.fixture
def fake_run(monkeypatch):
    """recipes.run replaced by a stub that writes a small folder and records where."""
    outs = []

    def run(recipe, out, *, steps=None, save_model=True):
        outs.append(Path(out))
        if Path(out).resolve().is_relative_to(resources.CHECKPOINTS.resolve()):
            return {"steps": 0, "final_validation_loss": 1.0}  # never touch the real shipped copies
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "recipe.json").write_text(json.dumps({"steps": steps or recipe.steps}))
        return {"steps": steps or recipe.steps, "final_validation_loss": 1.0, "history": {}}

    monkeypatch.setattr(recipes, "run", run)
    return outs


def test_the_command_writes_to_runs_key_by_default(tmp_path, monkeypatch, fake_run, capsys):
    monkeypatch.chdir(tmp_path)
    assert recipes.main(["book-gpt", "--steps", "3"]) == 0
    assert fake_run == [Path("runs/book-gpt")]
    assert f"wrote {tmp_path / 'runs' / 'book-gpt'}" in capsys.readouterr().out


@pytest.mark.parametrize("inside", ["book-gpt", "book-bert", ".", "book-gpt/sub"])
def test_the_command_refuses_an_out_inside_the_shipped_checkpoints(inside, fake_run, capsys):
    out = resources.CHECKPOINTS / inside
    with pytest.raises(SystemExit) as exit_info:
        recipes.main(["book-gpt", "--steps", "3", "--out", str(out)])
    assert exit_info.value.code != 0 and fake_run == []
    assert "where the shipped checkpoints live" in capsys.readouterr().err


def test_run_refuses_the_shipped_folder_before_training(monkeypatch):
    monkeypatch.setattr(recipes, "build", lambda recipe: pytest.fail("run() started training"))
    with pytest.raises(ValueError, match="where the shipped checkpoints live"):
        recipes.run(recipes.RECIPES["book-gpt"], resources.CHECKPOINTS / "book-gpt", steps=1)


def test_replace_shipped_swaps_the_new_run_in(tmp_path, monkeypatch, fake_run, capsys):
    shipped = tmp_path / "checkpoints"
    (shipped / "book-gpt").mkdir(parents=True)
    (shipped / "book-gpt" / "old-file.bin").write_bytes(b"old")
    monkeypatch.setattr(recipes, "CHECKPOINTS", shipped)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):  # the shipped copy is the recipe's full run
        recipes.main(["book-gpt", "--steps", "3", "--replace-shipped"])
    assert recipes.main(["book-gpt", "--replace-shipped"]) == 0
    assert sorted(p.name for p in (shipped / "book-gpt").iterdir()) == ["recipe.json"]
    assert sorted(p.name for p in shipped.iterdir()) == ["book-gpt"]  # no temporary folder left
    assert "tools/register_checkpoints.py" in capsys.readouterr().out


# --- the polarity fine-tuning recipes ---------------------------------------------------------------

POLARITY = sorted(recipes.POLARITY_RECIPES)
SHIPPED_POLARITY = sorted(p.name for p in recipes.RESULTS.iterdir()
                          if p.name in recipes.POLARITY_RECIPES and (p / "results.json").exists()) \
    if recipes.RESULTS.exists() else []
SUMMARY_KEYS = {"mean", "std", "values"}
COMMON_KEYS = {"recipe", "task", "full_run", "seeds", "hyperparameters_chosen_on", "wall_seconds", "device",
               "threads", "versions", "git_commit", "date", "split_sizes"}


def check_results_schema(results: dict, recipe: recipes.PolarityRecipe, seeds: list[int]) -> None:
    """The keys and the internal consistency of a polarity recipe's results.json."""
    assert COMMON_KEYS <= results.keys() and results["recipe"] == recipe.key and results["seeds"] == seeds
    assert {"torch", "transformers", "peft", "numpy", "python"} <= results["versions"].keys()
    assert f"{results['threads']} threads" in results["device"]
    if recipe.config is None:
        assert len(results["candidates"]) == len(recipe.grid)
        for candidate, config in zip(results["candidates"], recipe.grid):
            assert candidate["config"] == dataclasses.asdict(config)
            assert candidate["validation_accuracy"]["values"] == [r["validation_accuracy"] for r in candidate["runs"]]
            assert all("test_accuracy" not in r for r in candidate["runs"])  # the search never reads test
        for method, chosen in results["chosen"].items():
            mine = [c for c in results["candidates"] if c["config"]["method"] == method]
            assert chosen == max(mine, key=lambda c: c["validation_accuracy"]["mean"])["config"]
        return
    assert results["config"] == dataclasses.asdict(recipe.config)
    for name in ("test_accuracy", "validation_accuracy", "test_loss", "best_epoch", "train_seconds"):
        summary = results["metrics"][name]
        assert summary.keys() == SUMMARY_KEYS and len(summary["values"]) == len(seeds)
        assert summary["values"] == [r[name] for r in results["runs"]]
        assert summary["mean"] == pytest.approx(sum(summary["values"]) / len(seeds), abs=1e-6)
    n_test = results["split_sizes"]["test"]
    for run in results["runs"]:
        assert len(run["test_probabilities"]) == n_test
        assert {"steps", "epochs", "best_epoch", "tokens", "history", "train_seconds"} <= run.keys()
        assert 1 <= run["best_epoch"] <= run["epochs"] == len(run["history"])
    assert results["trainable_fraction"] == results["trainable_parameters"] / results["total_parameters"]
    assert bool(results["artifacts"]) == recipe.ship_weights


@pytest.mark.parametrize("key", POLARITY)
def test_a_short_run_of_each_polarity_recipe_writes_results_json(key, tmp_path):
    recipe = recipes.POLARITY_RECIPES[key]
    # a few steps on a few sentences (SmolLM2 is 6 times MiniLM's size: 8 sentences, 1 step)
    quick = ({"max_steps": 1, "subset": 16} if recipe.config is None else
             {"max_steps": 1, "subset": 8} if recipe.config.method == "decoder-lora" else
             {"max_steps": 2, "subset": 16})
    figures = recipes.run_polarity(recipe, tmp_path, seeds=(0,), **quick)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(figures)) and saved["full_run"] is False
    check_results_schema(saved, recipe, [0])
    assert saved["split_sizes"]["train"] == quick["subset"]
    if recipe.config is not None:
        assert saved["steps"] == quick["max_steps"] and saved["runs"][0]["tokens"] > 0
        assert saved["metrics"]["test_accuracy"]["std"] == 0.0  # one seed: no spread claimed
    if recipe.ship_weights:
        assert sorted(saved["artifacts"]) == [f"seed-0/{n}" for n in
                                              (["adapter_config.json", "adapter_model.safetensors"] +
                                               ([finetune.HEAD_FILE] if recipe.config.method == "lora" else []))]
        assert recipes.shipped_results(key, tmp_path) == saved  # every sha256 checks out
        model = recipes.shipped_adapter(key, 0, tmp_path)
        assert not model.training


def test_run_polarity_refuses_the_shipped_folder_and_no_seeds(monkeypatch):
    monkeypatch.setattr(recipes, "build_classifier", lambda *a: pytest.fail("run_polarity() started"))
    recipe = recipes.POLARITY_RECIPES["polarity-full"]
    with pytest.raises(ValueError, match="where the shipped results live"):
        recipes.run_polarity(recipe, recipes.RESULTS / "polarity-full", max_steps=1)
    with pytest.raises(ValueError, match="no seeds"):
        recipes.run_polarity(recipe, Path("/tmp/never-written"), seeds=())


def test_a_tampered_artifact_is_refused_with_the_way_back(tmp_path):
    (tmp_path / "seed-0").mkdir()
    (tmp_path / "seed-0" / "head.safetensors").write_bytes(b"tampered")
    (tmp_path / "results.json").write_text(json.dumps({"artifacts": {"seed-0/head.safetensors": "0" * 64}}))
    with pytest.raises(ValueError, match="differs from the sha256"):
        recipes.shipped_results("polarity-lora", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m companion.recipes polarity-lora"):
        recipes.shipped_results("polarity-lora", tmp_path / "nowhere")


@pytest.fixture
def fake_run_polarity(monkeypatch):
    """recipes.run_polarity replaced by a stub that writes a results.json and records its calls."""
    calls = []

    def run_polarity(recipe, out, *, max_steps=None, subset=None, seeds=None):
        calls.append((Path(out), max_steps, subset, seeds))
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text("{}")
        test = {"mean": 0.8, "std": 0.01, "values": [0.79, 0.8, 0.81]}
        return {"candidates": [], "chosen": {}, "metrics": {"test_accuracy": test}, "seeds": [0, 1, 2],
                "trainable_parameters": 1, "trainable_fraction": 0.01, "wall_seconds": 1.0, "device": "cpu"}

    monkeypatch.setattr(recipes, "run_polarity", run_polarity)
    return calls


@pytest.mark.parametrize("key", POLARITY)
def test_the_command_runs_a_polarity_recipe_into_runs_key(key, tmp_path, monkeypatch, fake_run_polarity,
                                                          capsys):
    monkeypatch.chdir(tmp_path)
    assert recipes.main([key, "--max-steps", "2", "--subset", "32", "--seeds", "0", "1"]) == 0
    assert fake_run_polarity == [(Path("runs") / key, 2, 32, (0, 1))]
    assert f"wrote {tmp_path / 'runs' / key / 'results.json'}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["polarity-full", "--out", str(recipes.RESULTS / "polarity-full")], "where the shipped results live"),
    (["polarity-lora", "--out", str(recipes.RESULTS)], "where the shipped results live"),
    (["polarity-full", "--steps", "3"], "use --max-steps"),
    (["polarity-full", "--replace-shipped", "--max-steps", "3"], "ships the recipe's full run"),
    (["polarity-lora", "--replace-shipped", "--seeds", "0"], "ships the recipe's full run"),
    (["book-gpt", "--max-steps", "3"], "for the polarity recipes"),
])
def test_the_command_refuses_what_would_break_a_shipped_copy(argv, message, fake_run_polarity, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipes.main(argv)
    assert exit_info.value.code != 0 and fake_run_polarity == []
    assert message in capsys.readouterr().err


def test_replace_shipped_swaps_a_polarity_run_into_the_results(tmp_path, monkeypatch, fake_run_polarity):
    shipped = tmp_path / "results"
    (shipped / "polarity-lora" / "seed-0").mkdir(parents=True)
    monkeypatch.setattr(recipes, "RESULTS", shipped)
    monkeypatch.chdir(tmp_path)
    assert recipes.main(["polarity-lora", "--replace-shipped"]) == 0
    assert [p.name for p in (shipped / "polarity-lora").iterdir()] == ["results.json"]
    assert sorted(p.name for p in shipped.iterdir()) == ["polarity-lora"]


# --- the shipped polarity results -------------------------------------------------------------------

@pytest.mark.skipif(not SHIPPED_POLARITY, reason="the polarity recipes' full runs are not shipped yet (issue 13)")
def test_the_polarity_results_the_chapter_reads_are_shipped():
    assert {"polarity-search", "polarity-plain", "polarity-full", "polarity-lora",
            "polarity-decoder"} <= set(SHIPPED_POLARITY)
    assert set(SHIPPED_POLARITY) <= set(POLARITY)


@pytest.mark.parametrize("key", SHIPPED_POLARITY)
def test_shipped_polarity_results_are_full_runs_with_intact_small_artifacts(key):
    recipe = recipes.POLARITY_RECIPES[key]
    results = recipes.shipped_results(key)  # checks every sha256
    assert results["full_run"] is True and len(results["seeds"]) == len(recipe.seeds)
    assert recipe.config is not None or len(recipe.seeds) == 1
    assert recipe.config is None or len(recipe.seeds) >= 3
    check_results_schema(results, recipe, list(recipe.seeds))
    assert results["split_sizes"] == ({"train": 3200, "validation": 400} if recipe.config is None
                                      else {"train": 3200, "validation": 400, "test": 400})
    for name in results.get("artifacts", {}):
        assert (recipes.RESULTS / key / name).stat().st_size <= 5 * 2**20, name


@pytest.mark.skipif(not SHIPPED_POLARITY, reason="the polarity recipes' full runs are not shipped yet (issue 13)")
def test_the_final_configurations_are_the_ones_the_search_chose():
    chosen = recipes.shipped_results("polarity-search")["chosen"]
    for key in ("polarity-full", "polarity-lora"):
        config = recipes.POLARITY_RECIPES[key].config
        assert chosen[config.method] == dataclasses.asdict(config), key


@pytest.mark.parametrize("key", [k for k in SHIPPED_POLARITY if recipes.POLARITY_RECIPES[k].ship_weights])
def test_shipped_adapters_reproduce_their_recorded_test_probabilities(key):
    import numpy as np
    from transformers import AutoTokenizer

    from companion.corpora import load_polarity

    results = recipes.shipped_results(key)
    config = finetune.FinetuneConfig(**results["config"])
    test = load_polarity()["test"]
    # the decoder's 3 x 400 sentences take a minute: its first 100 per seed check the same thing
    n = 100 if config.method == "decoder-lora" else len(test)
    rows = finetune.encode(AutoTokenizer.from_pretrained(config.model), test["text"][:n],
                           test["label"][:n], config.max_length)
    for seed, run in zip(results["seeds"], results["runs"]):
        live = finetune.evaluate(recipes.shipped_adapter(key, seed), rows)
        recorded = np.array(run["test_probabilities"])
        if n == len(test):
            assert live.accuracy == run["test_accuracy"], seed
        assert ((recorded > 0.5) == (np.array(test["label"]) == 1)).mean() == pytest.approx(
            run["test_accuracy"]), seed
        np.testing.assert_allclose(live.probabilities[:, 1], recorded[:n], atol=2e-4)


def test_an_interrupted_polarity_run_resumes_with_the_seeds_it_finished(tmp_path, monkeypatch):
    recipe = recipes.POLARITY_RECIPES["polarity-lora"]
    real_one_run, calls = recipes._one_run, []

    def one_run(config, seed, *args, **kwargs):
        calls.append(seed)
        if seed == 1 and calls.count(1) == 1:
            raise KeyboardInterrupt  # killed during the second seed
        return real_one_run(config, seed, *args, **kwargs)

    monkeypatch.setattr(recipes, "_one_run", one_run)
    with pytest.raises(KeyboardInterrupt):
        recipes.run_polarity(recipe, tmp_path, max_steps=1, subset=8, seeds=(0, 1))
    assert (tmp_path / ".seed-0.json").exists() and not (tmp_path / "results.json").exists()
    results = recipes.run_polarity(recipe, tmp_path, max_steps=1, subset=8, seeds=(0, 1))
    assert calls == [0, 1, 1] and results["resumed_seeds"] == [0]
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    # a shortened call keeps its part files (only a full run, which ships, deletes them)
    assert sorted(p.name for p in tmp_path.glob(".*.json")) == [".seed-0.json", ".seed-1.json"]
    assert recipes.shipped_results("polarity-lora", tmp_path)["runs"] == results["runs"]
    # another configuration does not reuse what an interrupted call left
    (tmp_path / ".seed-0.json").write_text(json.dumps({"key": {"config": {}}, "run": {}, "artifacts": {}}))
    assert recipes._finished_part(tmp_path / ".seed-0.json", tmp_path, {"config": {"lr": 1}}) is None


def test_the_readme_lists_every_recipe_with_its_shipped_time_and_numbers():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    check = subprocess.run([sys.executable, "tools/recipe_table.py", "--check"], cwd=root,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    keys = [*recipes.RECIPES, recipes.BERT_STANDARD, recipes.BERT_ABLATION, recipes.GPT_CHOICE,
            *recipes.POLARITY_RECIPES, *recipes.TAGGING_RECIPES, recipes.REVIEWS, recipes.NEURAL_LM,
            recipes.PEFT, "prompt-grid", recipes.INSTRUCT, recipes.RAG, recipes.CODEGEN, recipes.TRIPLES,
            recipes.DISTILL, recipes.PRUNE, recipes.ADVERSARIAL, recipes.CONTINUAL, recipes.DRAFT]
    for key in keys:
        assert f"| `{key}` |" in (root / "README.md").read_text()


def test_make_reproduce_reruns_every_recipe():
    import re

    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    listed = re.search(r"^RECIPES := ((?:.*\\\n)*.*)$", makefile, re.M).group(1).replace("\\\n", " ").split()
    keys = [*recipes.RECIPES, recipes.BERT_STANDARD, recipes.BERT_ABLATION, recipes.GPT_CHOICE,
            *recipes.POLARITY_RECIPES, *recipes.TAGGING_RECIPES, recipes.REVIEWS, recipes.NEURAL_LM,
            recipes.PEFT, "prompt-grid", recipes.INSTRUCT, recipes.RAG, recipes.CODEGEN, recipes.TRIPLES,
            recipes.DISTILL, recipes.PRUNE, recipes.ADVERSARIAL, recipes.CONTINUAL, recipes.DRAFT]
    assert sorted(listed) == sorted(keys)


def test_reviews_zh_is_a_recipe_command_shipped_with_the_results(tmp_path, monkeypatch):
    with pytest.raises(SystemExit):  # reviews-zh stops early on its own: --steps is refused
        recipes.main(["reviews-zh", "--steps", "3", "--out", str(tmp_path / "run")])
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{}")
    monkeypatch.setattr(recipes, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(recipes, "CHECKPOINTS", tmp_path / "checkpoints")
    assert recipes.install(run, "reviews-zh") == tmp_path / "results" / "reviews-zh"
    assert recipes.install(run, "book-gpt") == tmp_path / "checkpoints" / "book-gpt"


# --- bert-standard-init: book-bert from BERT's own initialisation, its curve only ---------------

def test_bert_standard_init_is_book_bert_without_local_init():
    standard, book = recipes.bert_standard_init(), recipes.RECIPES["book-bert"]
    assert standard.local_init is False and book.local_init is True
    assert dataclasses.replace(standard, key=book.key, local_init=True, eval_every=book.eval_every) == book


def test_the_shipped_bert_standard_init_run_records_its_recipe_and_a_full_curve():
    saved = json.loads((recipes.RESULTS / recipes.BERT_STANDARD / "recipe.json").read_text())
    assert saved["recipe"] == dataclasses.asdict(recipes.bert_standard_init())
    assert saved["steps"] == saved["recipe"]["steps"] == saved["history"]["step"][-1]
    assert saved["history"]["step"] == list(range(100, saved["steps"] + 1, 100))
    assert sorted(p.name for p in (recipes.RESULTS / recipes.BERT_STANDARD).iterdir()) == ["recipe.json"]


def test_a_run_without_the_model_writes_only_the_figures(tmp_path):
    figures = recipes.run(recipes.bert_standard_init(), tmp_path, steps=4, save_model=False)
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.json"]
    assert json.loads((tmp_path / "recipe.json").read_text())["steps"] == figures["steps"] == 4


# --- book-gpt-choice: book-gpt's recipe against its first one, curves only -----------------------

@pytest.fixture
def fake_clm_run(monkeypatch):
    """recipes.run replaced by a stub that writes recipe.json as run() does, with a loss from the lr."""
    calls = []

    def run(recipe, out, *, steps=None, save_model=True):
        calls.append((recipe.lr, recipe.seed))
        steps = steps or recipe.steps
        figures = {"recipe": dataclasses.asdict(recipe) | {"steps": steps}, "steps": steps,
                   "tokens": steps * recipe.batch_size * recipe.block_size, "train_seconds": 1.0,
                   "device": "cpu (test)", "final_validation_loss": round(1.5 - 10 * recipe.lr + recipe.seed / 100, 4)}
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "recipe.json").write_text(json.dumps(figures))
        return figures

    monkeypatch.setattr(recipes, "run", run)
    return calls


def test_gpt_choice_trains_both_recipes_per_seed_and_summarises(tmp_path, fake_clm_run):
    r = recipes.gpt_choice(tmp_path, seeds=(0, 1))
    assert fake_clm_run == [(2e-3, 0), (2e-3, 1), (3e-3, 0), (3e-3, 1)]
    assert r["final_validation_loss"]["first"]["values"] == [1.48, 1.49]
    assert r["final_validation_loss"]["current"]["mean"] == pytest.approx(1.475)
    assert r["recipes"]["current"] == dataclasses.asdict(recipes.RECIPES["book-gpt"])
    assert sorted(r["artifacts"]) == [f"{n}-seed-{s}/recipe.json" for n in ("current", "first") for s in (0, 1)]
    assert recipes.verified_results(tmp_path, recipes.GPT_CHOICE) == json.loads(json.dumps(r))
    assert "first 1.4850 ± 0.0071, current 1.4750 ± 0.0071" in recipes.gpt_choice_headline(r)


def test_gpt_choice_keeps_finished_runs_and_redoes_runs_of_other_steps(tmp_path, fake_clm_run):
    recipes.gpt_choice(tmp_path, seeds=(0,))
    fake_clm_run.clear()
    recipes.gpt_choice(tmp_path, seeds=(0,))
    assert fake_clm_run == []  # both runs were finished
    recipes.gpt_choice(tmp_path, seeds=(0,), steps=3)
    assert fake_clm_run == [(2e-3, 0), (3e-3, 0)]  # a quick check is not the full run


@pytest.mark.parametrize("kw, message", [({"seeds": ()}, "seeds is empty"), ({"steps": 0}, "at least 1")])
def test_gpt_choice_refuses_bad_arguments(tmp_path, fake_clm_run, kw, message):
    with pytest.raises(ValueError, match=message):
        recipes.gpt_choice(tmp_path, **kw)


@pytest.mark.parametrize("argv, message", [(["--max-steps", "3"], "not --max-steps"),
                                           (["--steps", "3", "--replace-shipped"], "drop --steps")])
def test_the_gpt_choice_command_refuses_what_it_cannot_do(argv, message, fake_clm_run, capsys):
    with pytest.raises(SystemExit):
        recipes.main([recipes.GPT_CHOICE, *argv])
    assert message in capsys.readouterr().err
    assert fake_clm_run == []


def test_the_shipped_gpt_choice_is_book_gpt_and_its_first_recipe_over_three_seeds():
    r = recipes.shipped_results(recipes.GPT_CHOICE)  # every run's recipe.json checked by its sha256
    assert r["recipes"] == {"first": dataclasses.asdict(recipes.BOOK_GPT_FIRST),
                            "current": dataclasses.asdict(recipes.RECIPES["book-gpt"])}
    assert r["seeds"] == [0, 1, 2] and len(r["runs"]) == 6
    first, current = (recipes.replace(r_, seed=0) for r_ in (recipes.BOOK_GPT_FIRST, recipes.RECIPES["book-gpt"]))
    assert first.steps * first.batch_size == current.steps * current.batch_size + 4  # the same 8.2M tokens
    shipped = json.loads((resources.model_dir("book-gpt") / "recipe.json").read_text())
    run = {(x["recipe"], x["seed"]): x for x in r["runs"]}
    assert run["current", 0]["final_validation_loss"] == shipped["final_validation_loss"]
    for (name, seed), x in run.items():
        recipe = recipes.replace(first if name == "first" else current, seed=seed)
        saved = json.loads((recipes.RESULTS / recipes.GPT_CHOICE / f"{name}-seed-{seed}" / "recipe.json").read_text())
        assert saved["recipe"] == dataclasses.asdict(recipe)
        assert saved["steps"] == recipe.steps == saved["history"]["step"][-1]
        assert saved["final_validation_loss"] == x["final_validation_loss"]


@pytest.mark.parametrize("key, module", [(recipes.CODEGEN, "codegen"), (recipes.RAG, "rag")])
def test_the_generation_recipes_run_on_one_thread_with_a_subset(key, module, tmp_path, monkeypatch, capsys):
    import importlib

    calls = []

    def run_recipe(out, **kw):
        calls.append((Path(out), kw))
        return {"wall_seconds": 1.0, "device": "cpu"}

    target = importlib.import_module(f"companion.{module}")
    monkeypatch.setattr(target, "run_recipe", run_recipe)
    monkeypatch.setattr(target, "headline", lambda r: "headline")
    monkeypatch.chdir(tmp_path)
    assert recipes.main([key, "--subset", "3"]) == 0
    expected = {"subset": 3} if key == recipes.CODEGEN else {"per_language": {"english": 3, "chinese": 3}}
    assert calls == [(Path("runs") / key, expected)]
    assert "headline" in capsys.readouterr().out
    for argv in ([key, "--steps", "2"], [key, "--seeds", "0"], [key, "--replace-shipped", "--subset", "3"]):
        with pytest.raises(SystemExit):
            recipes.main(argv)
    assert len(calls) == 1


@pytest.mark.parametrize("key, module", [(recipes.DISTILL, "distill"), (recipes.PRUNE, "prune"),
                                         (recipes.ADVERSARIAL, "adversarial_recipe"),
                                         (recipes.CONTINUAL, "continual_recipe"),
                                         (recipes.DRAFT, "draft_recipe")])
def test_the_compression_recipes_run_on_one_thread_with_seeds_and_a_subset(key, module, tmp_path,
                                                                          monkeypatch, capsys):
    import importlib

    import companion

    calls, threads = [], []
    monkeypatch.setattr(companion, "setup", lambda **kw: threads.append(kw.get("threads")))

    def run_recipe(out, **kw):
        calls.append((Path(out), kw))
        return {"wall_seconds": 1.0, "device": "cpu"}

    target = importlib.import_module(f"companion.{module}")
    monkeypatch.setattr(target, "run_recipe", run_recipe)
    monkeypatch.setattr(target, "headline", lambda r: "headline")
    monkeypatch.chdir(tmp_path)
    assert recipes.main([key, "--subset", "8", "--seeds", "0"]) == 0
    assert calls == [(Path("runs") / key, {"seeds": (0,), "subset": 8})]
    assert threads == [2 if key == recipes.DRAFT else 1]  # the draft recipe times decoding on two
    assert "headline" in capsys.readouterr().out
    for argv in ([key, "--steps", "2"], [key, "--max-steps", "2"]):
        with pytest.raises(SystemExit):
            recipes.main(argv)
    assert len(calls) == 1


def test_run_folder_is_created_and_never_inside_the_shipped_results(tmp_path):
    assert recipes.run_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    with pytest.raises(ValueError, match="where the shipped results live"):
        recipes.run_folder(recipes.RESULTS / "anything")
    assert not (recipes.RESULTS / "anything").exists()


@pytest.fixture
def fake_ablation_run(monkeypatch):
    """recipes.bert_ablation_run replaced by a stub whose loss depends on the arm and the seed."""
    calls = []

    def run(arm, seed=0, steps=recipes.ABLATION_STEPS):
        calls.append((arm, seed, steps))
        loss = round(2.8 - 0.4 * (arm == "both") + seed / 100, 4)
        return {"arm": arm, "seed": seed, "steps": steps, "train_seconds": 1.0, "final_validation_loss": loss,
                "history": {"step": [steps], "eval_loss": [loss]}}

    monkeypatch.setattr(recipes, "bert_ablation_run", run)
    return calls


def test_bert_ablation_trains_every_arm_per_seed_and_keeps_finished_runs(tmp_path, fake_ablation_run):
    r = recipes.bert_ablation(tmp_path, seeds=(0, 1))
    assert fake_ablation_run == [(arm, s, 250) for arm in recipes.ABLATION_ARMS for s in (0, 1)]
    assert r["final_validation_loss"]["both"]["values"] == [2.4, 2.41]
    assert r["final_validation_loss"]["bert-init"]["mean"] == pytest.approx(2.805)
    assert sorted(r["artifacts"]) == sorted(f"runs/{a}-seed-{s}.json" for a in recipes.ABLATION_ARMS for s in (0, 1))
    assert recipes.verified_results(tmp_path, recipes.BERT_ABLATION) == json.loads(json.dumps(r))
    assert "both 2.4050 ± 0.0071" in recipes.bert_ablation_headline(r)
    recipes.bert_ablation(tmp_path, seeds=(0, 1))  # finished: nothing trained again
    assert len(fake_ablation_run) == 8
    recipes.bert_ablation(tmp_path, seeds=(0,), steps=3)  # another length: trained again
    assert fake_ablation_run[8:] == [(arm, 0, 3) for arm in recipes.ABLATION_ARMS]


@pytest.mark.parametrize("kw, message", [({"seeds": ()}, "seeds is empty"), ({"steps": 0}, "at least 1")])
def test_bert_ablation_refuses_bad_arguments(tmp_path, fake_ablation_run, kw, message):
    with pytest.raises(ValueError, match=message):
        recipes.bert_ablation(tmp_path, **kw)
    with pytest.raises(ValueError, match="inside"):
        recipes.bert_ablation(recipes.RESULTS / "somewhere")


def test_a_bert_ablation_run_returns_its_curve_and_refuses_an_unknown_arm():
    with pytest.raises(ValueError, match="unknown arm 'half'"):
        recipes.bert_ablation_run("half")
    with pytest.raises(ValueError, match="at least 1"):
        recipes.bert_ablation_run("both", steps=0)
    run = recipes.bert_ablation_run("identity-only", seed=1, steps=1)  # the real thing, one step
    assert (run["arm"], run["seed"], run["steps"], run["history"]["step"]) == ("identity-only", 1, 1, [1])
    assert run["final_validation_loss"] == run["history"]["eval_loss"][-1] > 0


def test_the_shipped_bert_ablation_has_every_arm_over_three_seeds():
    r = recipes.shipped_results(recipes.BERT_ABLATION)  # every run's file checked by its sha256
    assert r["steps"] == recipes.ABLATION_STEPS and len(r["seeds"]) >= 3
    assert r["arms"] == recipes.ABLATION_ARMS
    for arm in recipes.ABLATION_ARMS:
        runs = [json.loads((recipes.RESULTS / recipes.BERT_ABLATION / f"runs/{arm}-seed-{s}.json").read_text())
                for s in r["seeds"]]
        assert [run["history"]["step"] for run in runs] == [list(range(50, 251, 50))] * len(runs)
        values = [run["history"]["eval_loss"][-1] for run in runs]
        assert r["final_validation_loss"][arm]["values"] == values
        assert r["final_validation_loss"][arm]["mean"] == pytest.approx(sum(values) / len(values), abs=1e-6)
