"""companion.neural_lm: windows, the MLP, perplexity, training, the neural-lm-zh recipe and its
shipped results."""

import json
import math

import pytest
import torch

from companion import neural_lm as nl
from companion.ngram import EOS, UNK, NGramLM
from companion.resources import sha256

VOCAB = [EOS, UNK, "a", "b"]  # ids 0-3; <s> is id 4


def test_zh_sentences_cut_after_full_stops():
    assert nl.zh_sentences(["你好。我很好！再见", "对吗？", ""]) == ["你好。", "我很好！", "再见", "对吗？"]


def test_windows_by_hand():
    w = nl.windows(["ab", "", "c"], VOCAB, context=2)  # c is unknown; "" is one </s>
    assert w.tolist() == [[4, 4, 2], [4, 2, 3], [2, 3, 0], [4, 4, 0], [4, 4, 1], [4, 1, 0]]
    assert len(w) == len("ab") + len("c") + 3  # one window per character and per </s>


def test_windows_context_longer_than_sentence():
    w = nl.windows(["a"], VOCAB, context=4)
    assert w.tolist() == [[4, 4, 4, 4, 2], [4, 4, 4, 2, 0]]


@pytest.mark.parametrize("args, match", [
    (([], VOCAB), "no sentences"),
    ((["ab"], VOCAB, 0), "context must be at least 1"),
    ((["ab"], ["a", "b"]), "must contain"),
])
def test_windows_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        nl.windows(*args)


def test_the_untrained_bias_gives_the_unigram_distribution():
    w = nl.windows(["abab", "aab", "b"], VOCAB, context=3)
    model = nl.build_model(len(VOCAB), nl.RecipeConfig(context=3, dim=8, hidden=16), w, seed=0)
    counts = torch.bincount(w[:, -1], minlength=len(VOCAB)).double() + 1  # add-one
    assert torch.allclose(model.bias.softmax(-1).double(), counts / counts.sum(), atol=1e-6)
    with torch.no_grad():  # without the hidden path, the bias alone is the distribution
        model.out.weight.zero_()
        model.out.bias.zero_()
    assert torch.allclose(model(w[:, :-1]).softmax(-1).double(), (counts / counts.sum()).expand(len(w), -1),
                          atol=1e-6)


def test_perplexity_is_exp_of_the_mean_cross_entropy():
    torch.manual_seed(0)
    model = nl.MLPLanguageModel(len(VOCAB), 2, dim=4, hidden=8)
    w = nl.windows(["abba", "ba", "aaab"], VOCAB, context=2)
    logp = model(w[:, :-1]).log_softmax(-1).double()
    by_hand = math.exp(-logp[torch.arange(len(w)), w[:, -1]].mean().item())
    assert nl.perplexity(model, w, batch_size=3) == pytest.approx(by_hand, rel=1e-6)
    assert model.training  # perplexity() leaves the mode as it found it
    with pytest.raises(ValueError, match="non-empty"):
        nl.perplexity(model, w[:0])


def test_learning_rate_warms_up_then_decays_to_zero():
    c = nl.RecipeConfig(steps=100, warmup=10, lr=1e-2)
    assert nl.learning_rate(c, 0) == pytest.approx(1e-3, rel=0.01)
    assert max(nl.learning_rate(c, s) for s in range(100)) <= 1e-2
    assert nl.learning_rate(c, 99) < 1e-5


def test_train_is_seeded_and_learns(one_thread):
    sentences = ["abab", "ba", "aabb", "bbaa"] * 20
    w = nl.windows(sentences, VOCAB, context=2)
    config = nl.RecipeConfig(context=2, dim=8, hidden=16, steps=60, batch_size=32, warmup=5, eval_every=30)
    runs = []
    for _ in range(2):
        model = nl.build_model(len(VOCAB), config, w, seed=3)
        runs.append(nl.train(model, w, config, seed=3, valid_windows=w))
    assert runs[0]["curve"] == runs[1]["curve"]
    curve = runs[0]["curve"]
    assert [r["step"] for r in curve] == [0, 30, 60]
    assert curve[-1]["validation_perplexity"] < curve[0]["validation_perplexity"]
    with pytest.raises(ValueError, match="steps"):
        nl.train(model, w, nl.RecipeConfig(steps=0), seed=0)


# --- the recipe, shortened ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, one_thread):
    """3 steps on the first 300 sentences of each split, two seeds, a two-candidate search."""
    out = tmp_path_factory.mktemp("neural-lm-zh")
    return out, nl.run_recipe(out, max_steps=3, subset=300, seeds=(0, 1), search=({"lr": 5e-3}, {"lr": 1e-3}))


def test_quick_run_results(quick_run):
    out, results = quick_run
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(results))
    assert saved["recipe"] == "neural-lm-zh" and saved["full_run"] is False and saved["seeds"] == [0, 1]
    assert saved["steps"] == 3 and saved["examples_seen"] == 3 * 256
    assert [r["seed"] for r in saved["runs"]] == [0, 1]
    chosen = saved["chosen_on_validation"]
    assert [c["lr"] for c in chosen["comparison"]] == [5e-3, 1e-3]
    assert all("test_perplexity" not in c for c in chosen["comparison"])  # the search never reads test
    best = min(chosen["comparison"], key=lambda c: c["validation_perplexity"])
    assert saved["config"]["lr"] == best["lr"] == chosen["chosen"]["lr"]
    assert saved["runs"][0]["validation_perplexity"] == best["validation_perplexity"]
    for name in ("validation_perplexity", "test_perplexity"):
        assert saved["metrics"][name]["values"] == [r[name] for r in saved["runs"]]
    for run in saved["runs"]:
        assert [p["step"] for p in run["curve"]] == [0, 3]
    kn = saved["kneser_ney"]["perplexity"]
    assert set(kn) == {"validation", "test"} and set(kn["test"]) == {"1-gram", "2-gram", "3-gram", "4-gram"}
    for key in ("wall_seconds", "device", "threads", "versions", "git_commit", "date"):
        assert key in saved
    assert nl.headline(saved).startswith("MLP after 3 steps")


def test_quick_run_artifacts_reload_and_are_checked(quick_run, tmp_path):
    out, results = quick_run
    assert set(results["artifacts"]) == {"seed-0/model.safetensors", "vocab.json"}
    for name, digest in results["artifacts"].items():
        assert sha256(out / name) == digest
    model, vocab, _ = nl.load_shipped(out, 0)
    sentences = nl.load_sentences(300)
    assert vocab == NGramLM(order=1, min_count=2).fit(sentences["train"]).vocab
    assert nl.perplexity(model, nl.windows(sentences["validation"], vocab)) == \
        results["runs"][0]["validation_perplexity"]
    with pytest.raises(ValueError, match="no model for seed 1"):
        nl.load_shipped(out, 1)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ["results.json", *results["artifacts"]]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((out / name).read_bytes())
    (copy / "vocab.json").write_text(json.dumps(vocab[::-1], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.json"):
        nl.load_shipped(copy)


@pytest.mark.parametrize("kwargs", [{"seeds": ()}, {"seeds": (0, 0)}, {"max_steps": 0}, {"subset": 1}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        nl.run_recipe(tmp_path, **kwargs)
    assert not (tmp_path / "results.json").exists()


# --- the shipped results the chapter reads ------------------------------------------------------------

def test_shipped_results_are_a_full_run():
    results = nl.shipped_results()  # checks every sha256
    assert results["full_run"] is True and results["seeds"] == [0, 1, 2]
    assert results["config"] == {**results["chosen_on_validation"]["base"], **results["chosen_on_validation"]["chosen"]}
    assert results["vocabulary_size"] == 4109 and results["splits"]["validation"]["windows"] == 91087
    assert (nl.SHIPPED / "seed-0" / "model.safetensors").stat().st_size < 5 * 2**20


def test_shipped_model_reproduces_its_recorded_perplexities(one_thread):
    model, vocab, results = nl.load_shipped()
    sentences = nl.load_sentences()
    assert vocab == NGramLM(order=1, min_count=2).fit(sentences["train"]).vocab  # the chapter's vocabulary
    run = results["runs"][0]
    for split in ("validation", "test"):
        assert nl.perplexity(model, nl.windows(sentences[split], vocab)) == \
            pytest.approx(run[f"{split}_perplexity"], rel=1e-3), split


def test_neural_lm_zh_is_a_recipe_command(tmp_path, monkeypatch):
    from companion import recipes

    with pytest.raises(SystemExit):  # it runs whole epochs: --steps is refused
        recipes.main(["neural-lm-zh", "--steps", "3", "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit):  # --replace-shipped ships full runs only
        recipes.main(["neural-lm-zh", "--max-steps", "3", "--replace-shipped"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("{}")
    monkeypatch.setattr(recipes, "RESULTS", tmp_path / "results")
    assert recipes.install(run, recipes.NEURAL_LM) == tmp_path / "results" / "neural-lm-zh"
