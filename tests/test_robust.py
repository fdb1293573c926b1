"""companion.robust: FGM and PGD adversarial training, the embedding attack, the character attack."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from companion import finetune as ft
from companion import robust

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_classifier(seed=0):
    """A MeanPoolClassifier on a random 2-layer BERT of width 32, in eval mode (no dropout)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, pad_token_id=0)
    return ft.MeanPoolClassifier(BertModel(config, add_pooling_layer=False), num_labels=2).eval()


def toy_batch(n=6, seed=0):
    """A padded batch of n sentences of 3-9 random tokens with random labels."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 10, (1,), generator=g))
        rows.append({"input_ids": torch.randint(1, 20, (length,), generator=g),
                     "attention_mask": torch.ones(length, dtype=torch.long),
                     "labels": torch.randint(0, 2, (), generator=g)})
    return rows, ft.collate(rows)


class Toy(nn.Module):
    """Loss w * sum of |e|^2 / 2 over the batch's token embeddings: every gradient by hand."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(3, 2)
        self.w = nn.Parameter(torch.tensor(1.5))
        with torch.no_grad():
            self.emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]))

    def get_input_embeddings(self):
        return self.emb


def toy_loss(model, batch):
    return model.w * (model.emb(batch["input_ids"]) ** 2).sum() / 2


TOY_BATCH = {"input_ids": torch.tensor([[0, 1]])}


def clean_backward(model, batch, loss_fn=robust.classifier_loss):
    model.zero_grad(set_to_none=True)
    loss_fn(model, batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def record_offsets(model):
    """A forward hook noting ||W - W0|| of the embedding matrix at every forward pass."""
    layer = robust.input_embeddings(model)
    original, norms = layer.weight.detach().clone(), []
    handle = layer.register_forward_hook(
        lambda m, a, o: norms.append(float((m.weight.detach() - original).double().norm())))
    return original, norms, handle


# --- FGM -------------------------------------------------------------------------------------

def test_fgm_perturbation_has_norm_eps_over_the_whole_matrix():
    g = torch.randn(7, 5)
    r = robust.fgm_perturbation(g, 0.3)
    assert math.isclose(float(r.double().norm()), 0.3, rel_tol=1e-6)
    assert torch.allclose(r / r.norm(), g / g.norm())
    assert torch.equal(robust.fgm_perturbation(torch.zeros(3, 2), 0.3), torch.zeros(3, 2))


def test_fgm_step_moves_the_embeddings_by_eps_and_restores_them_bit_for_bit():
    model = tiny_classifier()
    _, batch = toy_batch()
    clean_backward(model, batch)
    original, norms, handle = record_offsets(model)
    robust.fgm_step(model, batch, eps=0.5)
    handle.remove()
    assert len(norms) == 1 and math.isclose(norms[0], 0.5, rel_tol=1e-5)
    assert torch.equal(robust.input_embeddings(model).weight, original)


def test_fgm_with_eps_zero_adds_the_clean_gradient_again():
    model = tiny_classifier()
    _, batch = toy_batch()
    clean = clean_backward(model, batch)
    loss = robust.fgm_step(model, batch, eps=0.0)
    assert math.isclose(loss, float(robust.classifier_loss(model, batch).detach()), rel_tol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, 2 * clean[name], atol=1e-7), name


def test_fgm_gradients_match_a_hand_computation():
    model, eps = Toy(), 0.5
    clean_backward(model, TOY_BATCH, toy_loss)
    robust.fgm_step(model, TOY_BATCH, eps, toy_loss)
    w, s5 = 1.5, math.sqrt(5)
    g = w * torch.tensor([[1.0, 0], [0, 2], [0, 0]])  # rows 0 and 1 are in the batch
    adv_rows = torch.tensor([[1.0, 0], [0, 2], [0, 0]]) * (1 + eps / s5)  # E + eps g / ||g||
    assert torch.allclose(model.emb.weight.grad, g + w * adv_rows)
    assert math.isclose(float(model.w.grad), 2.5 + float((adv_rows ** 2).sum()) / 2, rel_tol=1e-6)
    assert torch.equal(model.emb.weight, Toy().emb.weight)


def test_fgm_and_pgd_need_the_clean_backward_first():
    model = Toy()
    with pytest.raises(ValueError, match="call loss.backward"):
        robust.fgm_step(model, TOY_BATCH, 0.1, toy_loss)
    with pytest.raises(ValueError, match="call loss.backward"):
        robust.pgd_step(model, TOY_BATCH, 0.1, loss_fn=toy_loss)


# --- PGD -------------------------------------------------------------------------------------

def test_pgd_stays_in_the_ball_at_every_step_and_restores():
    model = tiny_classifier()
    _, batch = toy_batch()
    clean_backward(model, batch)
    original, norms, handle = record_offsets(model)
    robust.pgd_step(model, batch, eps=0.5, alpha=0.3, steps=4)
    handle.remove()
    assert len(norms) == 4
    assert all(n <= 0.5 * (1 + 1e-5) for n in norms)
    assert math.isclose(norms[0], 0.3, rel_tol=1e-5) and math.isclose(norms[-1], 0.5, rel_tol=1e-5)
    assert torch.equal(robust.input_embeddings(model).weight, original)


def test_pgd_with_eps_zero_adds_the_clean_gradient_again():
    model = tiny_classifier()
    _, batch = toy_batch()
    clean = clean_backward(model, batch)
    robust.pgd_step(model, batch, eps=0.0, alpha=0.1, steps=3)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, 2 * clean[name], atol=1e-7), name


def test_pgd_gradients_match_a_hand_computation():
    model, eps, alpha, w = Toy(), 0.6, 0.4, 1.5
    clean_backward(model, TOY_BATCH, toy_loss)
    robust.pgd_step(model, TOY_BATCH, eps, alpha, steps=2, loss_fn=toy_loss)
    E, used = Toy().emb.weight.detach(), torch.tensor([[1.0], [1.0], [0.0]])
    g = w * E * used                                            # the clean gradient
    d = alpha * g / g.norm()                                    # step 1, inside the ball (0.4 < 0.6)
    g1 = w * (E + d) * used
    d = d + alpha * g1 / g1.norm()
    d = d * eps / d.norm()                                      # step 2, projected back onto the ball
    assert torch.allclose(model.emb.weight.grad, g + w * (E + d) * used, atol=1e-6)
    half_square = lambda x: float((x * used).pow(2).sum() / 2)  # noqa: E731
    assert math.isclose(float(model.w.grad), half_square(E) + half_square(E + d), rel_tol=1e-6)


@pytest.mark.parametrize("kwargs, message", [({"eps": -0.1}, "eps"), ({"steps": 0}, "steps"),
                                             ({"alpha": 0.0}, "alpha"), ({"eps": float("nan")}, "eps")])
def test_pgd_and_the_embedding_attack_refuse_bad_settings(kwargs, message):
    model = tiny_classifier()
    _, batch = toy_batch()
    clean_backward(model, batch)
    with pytest.raises(ValueError, match=message):
        robust.pgd_step(model, batch, **kwargs)
    with pytest.raises(ValueError, match=message):
        robust.embedding_attack(model, batch, **kwargs)
    if "eps" in kwargs:
        with pytest.raises(ValueError, match="eps"):
            robust.fgm_step(model, batch, eps=kwargs["eps"])


def test_input_embeddings_refuses_a_model_without_them():
    with pytest.raises(TypeError, match="get_input_embeddings"):
        robust.input_embeddings(nn.Linear(2, 2))


# --- attack on input embeddings --------------------------------------------------------------

def test_embedding_attack_lowers_accuracy_inside_the_ball_and_touches_nothing():
    model = tiny_classifier().train()
    _, batch = toy_batch(n=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = robust.embedding_attack(model, batch, eps=3.0, steps=5, alpha=1.0)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert np.all(result.norms <= 3.0 * (1 + 1e-5)) and np.all(result.norms > 1.0)  # steps of 1 add up
    assert result.accuracy < result.clean_accuracy
    with torch.no_grad():
        clean = ft.classifier_logits(model.eval(), batch).argmax(-1).numpy()
    assert np.array_equal(result.clean, clean)


def test_embedding_attack_with_eps_zero_changes_nothing():
    model = tiny_classifier()
    _, batch = toy_batch(n=8)
    result = robust.embedding_attack(model, batch, eps=0.0, steps=2, alpha=0.5)
    assert np.array_equal(result.attacked, result.clean) and result.accuracy == result.clean_accuracy


def test_embedding_attack_treats_each_sentence_on_its_own():
    model = tiny_classifier()
    rows, batch = toy_batch(n=5)
    together = robust.embedding_attack(model, batch, eps=1.0, steps=3, alpha=0.5)
    alone = [robust.embedding_attack(model, ft.collate([r]), eps=1.0, steps=3, alpha=0.5) for r in rows]
    assert np.array_equal(together.attacked, np.concatenate([a.attacked for a in alone]))
    assert np.allclose(together.norms, np.concatenate([a.norms for a in alone]), rtol=1e-4)


# --- character attack ------------------------------------------------------------------------

POSITIVE, NEGATIVE = {"good", "great", "fun"}, {"bad", "awful"}


def keyword_proba(texts):
    """A toy classifier: p(positive) = sigmoid(4 * (#positive - #negative words) - 2)."""
    scores = np.array([sum((w in POSITIVE) - (w in NEGATIVE) for w in t.split()) for t in texts])
    p = 1 / (1 + np.exp(-(4 * scores - 2)))
    return np.stack([1 - p, p], axis=1)


def test_keyboard_neighbours_follow_a_qwerty_layout():
    assert set(robust.NEIGHBOURS["s"]) == set("adwezx")
    assert set(robust.NEIGHBOURS["q"]) == set("wa")
    assert all(a in robust.NEIGHBOURS[b] for a in robust.NEIGHBOURS for b in robust.NEIGHBOURS[a])


def test_char_edits_are_single_distinct_edits():
    rng = np.random.default_rng(0)
    edits = robust.char_edits("good", rng)
    assert len(edits) == len(set(edits)) >= 3 and "good" not in edits
    assert sorted({len(e) for e in edits}) == [3, 4, 5]  # a deletion, swap/substitute, an insertion
    assert robust.char_edits("...", rng) == [] and "" not in robust.char_edits("a", rng)
    assert all(e[0].isupper() or e[0] == "o" for e in robust.char_edits("Good", np.random.default_rng(3)))


def test_the_attack_flips_a_keyword_classifier_with_one_edit_of_the_key_word():
    text = "good plot , bad acting , great cast"
    result = robust.attack_text(text, 1, keyword_proba, budget=3, seed=0)
    assert result.correct and result.success and len(result.edits) == 1
    position, word, edited = result.edits[0]
    assert (position, word) == (0, "good") and edited != "good"  # ties in importance: the first word
    assert result.adversarial.split() == [edited] + text.split()[1:]
    assert keyword_proba([result.adversarial])[0].argmax() == 0
    assert result == robust.attack_text(text, 1, keyword_proba, budget=3, seed=0)


def test_the_attack_respects_its_budget():
    failed = robust.attack_text("good and great", 1, keyword_proba, budget=1, seed=0)
    assert failed.correct and not failed.success and len(failed.edits) == 1
    assert keyword_proba([failed.adversarial])[0].argmax() == 1
    done = robust.attack_text("good and great", 1, keyword_proba, budget=2, seed=0)
    assert done.success and {w for _, w, _ in done.edits} == {"good", "great"}


def test_a_misclassified_text_is_not_attacked():
    result = robust.attack_text("a good film", 0, keyword_proba)
    assert not result.correct and not result.success
    assert result.adversarial == "a good film" and result.queries == 1


def test_success_rate_counts_only_originally_correct_texts():
    texts = ["a good film", "a bad film", "a good film", "so much fun"]
    labels = [1, 0, 0, 1]  # flippable, not flippable (no positive word to remove), wrong, flippable
    summary = robust.attack_success_rate(texts, labels, keyword_proba, budget=2, seed=0)
    assert [r.correct for r in summary.results] == [True, True, False, True]
    assert [r.success for r in summary.results] == [True, False, False, True]
    assert summary.clean_accuracy == 0.75 and summary.success_rate == 2 / 3 and summary.accuracy == 0.25
    assert summary == robust.attack_success_rate(texts, labels, keyword_proba, budget=2, seed=0)


def test_success_rate_is_nan_when_nothing_was_correct():
    summary = robust.attack_success_rate(["a good film"], [0], keyword_proba)
    assert math.isnan(summary.success_rate) and summary.accuracy == 0.0


def test_the_character_attack_refuses_bad_input():
    with pytest.raises(ValueError, match="budget"):
        robust.attack_text("a good film", 1, keyword_proba, budget=0)
    with pytest.raises(ValueError, match="empty text"):
        robust.attack_text("   ", 1, keyword_proba)
    with pytest.raises(ValueError, match="no texts"):
        robust.attack_success_rate([], [], keyword_proba)
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        robust.attack_success_rate(["a", "b"], [1], keyword_proba)
    with pytest.raises(ValueError, match="predict_proba must return"):
        robust.attack_text("a good film", 1, lambda texts: np.zeros(len(texts)))


@pytest.mark.parametrize("step", [lambda m, b: robust.fgm_step(m, b, eps=0.5),
                                  lambda m, b: robust.pgd_step(m, b, eps=0.5, alpha=0.3, steps=3)])
def test_frozen_embeddings_as_under_lora_get_the_same_adversarial_gradients(step):
    trainable, frozen = tiny_classifier(), tiny_classifier()
    _, batch = toy_batch()
    clean_backward(trainable, batch)
    step(trainable, batch)
    weight = robust.input_embeddings(frozen).weight
    weight.requires_grad_(False)
    clean_backward(frozen, batch)
    step(frozen, batch)
    assert weight.grad is None and not weight.requires_grad
    for (name, p), q in zip(frozen.named_parameters(), trainable.parameters()):
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    assert torch.equal(weight, robust.input_embeddings(tiny_classifier()).weight)


def test_classifier_proba_attacks_a_real_tokenizer_and_model():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ft.MINILM)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    model = ft.MeanPoolClassifier(BertModel(config, add_pooling_layer=False), num_labels=2).train()
    predict = robust.classifier_proba(model, tokenizer, max_length=16)
    texts = ["a good film .", "a dull , lifeless mess", "fine"]
    p = predict(texts)
    assert p.shape == (3, 2) and np.allclose(p.sum(1), 1.0) and model.training
    with torch.no_grad():
        enc = tokenizer(texts[:1], return_tensors="pt")
        expected = model.eval()(enc["input_ids"], enc["attention_mask"]).logits.softmax(-1)
    assert np.allclose(p[0], expected.numpy()[0], atol=1e-5)
    summary = robust.attack_success_rate(texts, p.argmax(1), predict, budget=2, seed=0)
    assert summary.clean_accuracy == 1.0 and summary.n == 3
    for r in summary.results:
        assert predict([r.adversarial])[0].argmax() != r.label if r.success else len(r.edits) <= 2


def test_the_weights_are_restored_when_the_adversarial_loss_fails():
    model, calls = Toy(), []
    model.emb.weight.requires_grad_(False)

    def failing_loss(m, batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return toy_loss(m, batch)

    with pytest.raises(RuntimeError, match="out of memory"):
        robust.pgd_step(model, TOY_BATCH, eps=0.5, alpha=0.3, steps=3, loss_fn=failing_loss)
    assert torch.equal(model.emb.weight, Toy().emb.weight) and not model.emb.weight.requires_grad


def test_the_most_important_word_is_edited_first():
    result = robust.attack_text("the plot was good", 1, keyword_proba, budget=1, seed=0)
    assert result.success and result.edits[0][:2] == (3, "good")
    first_edits = robust.char_edits("good", np.random.default_rng(0))
    assert result.queries == 1 + 4 + len(first_edits)  # original, leave-one-out, edits of "good"


def test_an_edit_that_does_not_help_costs_no_budget():
    def needs_three_words_and_good(texts):  # removing any word matters; only editing "good" helps
        p = np.array([0.9 if len(t.split()) >= 3 and "good" in t.split() else 0.1 for t in texts])
        return np.stack([1 - p, p], axis=1)

    result = robust.attack_text("a b good", 1, needs_three_words_and_good, budget=1, seed=0)
    assert result.success and [e[1] for e in result.edits] == ["good"]


# --- the adversarial recipe ------------------------------------------------------------------

def test_embedding_attack_data_is_the_batch_attack_in_the_data_order():
    model = tiny_classifier()
    rows, batch = toy_batch(n=7)
    whole = robust.embedding_attack(model, batch, eps=0.5, steps=3, alpha=0.25)
    parts = robust.embedding_attack_data(model, rows, eps=0.5, steps=3, alpha=0.25, batch_size=3)
    assert np.array_equal(parts.labels, whole.labels) and np.array_equal(parts.clean, whole.clean)
    assert np.array_equal(parts.attacked, whole.attacked)
    assert np.allclose(parts.norms, whole.norms, atol=1e-5) and (parts.norms <= 0.5 + 1e-5).all()
    with pytest.raises(ValueError, match="no sentences"):
        robust.embedding_attack_data(model, [], eps=0.5)


def tiny_data(n, seed):
    rows, _ = toy_batch(n=n, seed=seed)
    return rows


@pytest.mark.parametrize("select", ["best", "last"])
def test_the_clean_arm_is_train_classifier_step_for_step(select):
    from companion.adversarial_recipe import train_adversarial

    config = ft.FinetuneConfig(lr=1e-2, head_lr=1e-2, epochs=2, batch_size=4, select=select)
    train, validation = tiny_data(10, 1), tiny_data(4, 2)
    models, results = [], []
    for fit in (ft.train_classifier, lambda *a, **k: train_adversarial(*a, arm="clean", **k)):
        model = tiny_classifier()
        torch.manual_seed(5)  # dropout draws
        results.append(fit(model, train, validation, config, seed=3))
        models.append(model)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), name
    assert results[0].history == results[1].history and results[0].tokens == results[1].tokens
    assert results[0].best_epoch == results[1].best_epoch and results[1].steps == 6


@pytest.mark.parametrize("arm", ["fgm", "pgd"])
def test_the_adversarial_arms_train_differently_and_leave_frozen_embeddings_alone(arm):
    from companion.adversarial_recipe import train_adversarial

    config = ft.FinetuneConfig(lr=1e-2, head_lr=1e-2, epochs=1, batch_size=4)
    train, validation = tiny_data(8, 1), tiny_data(4, 2)
    trained = []
    for which in ("clean", arm):
        model = tiny_classifier()
        robust.input_embeddings(model).weight.requires_grad_(False)  # as under LoRA
        torch.manual_seed(5)
        train_adversarial(model, train, validation, config, arm=which, eps=2.0, seed=3)
        trained.append(model)
    original = robust.input_embeddings(tiny_classifier()).weight
    assert all(torch.equal(robust.input_embeddings(m).weight, original) for m in trained)
    assert not torch.equal(trained[0].head.weight, trained[1].head.weight)


def test_train_adversarial_and_the_config_refuse_bad_settings():
    from companion.adversarial_recipe import AdversarialConfig, train_adversarial

    rows = tiny_data(4, 1)
    with pytest.raises(ValueError, match="unknown arm"):
        train_adversarial(tiny_classifier(), rows, rows, ft.FinetuneConfig(), arm="fgsm")
    with pytest.raises(ValueError, match="LP-FT"):
        train_adversarial(tiny_classifier(), rows, rows, ft.FinetuneConfig(probe_init=True))
    with pytest.raises(ValueError, match="must not be empty"):
        train_adversarial(tiny_classifier(), [], rows, ft.FinetuneConfig())
    for bad in ({"eps_grid": ()}, {"eps_grid": (0.0, 1.0)}, {"budget": 0}, {"attack_eps": 0.0},
                {"attack_sentences": 0}, {"pgd_steps": 0}):
        with pytest.raises(ValueError):
            AdversarialConfig(**bad)


def test_the_recipe_on_a_subset_writes_every_arm_to_results_json(tmp_path):
    import json

    from companion import adversarial_recipe as adv
    from companion.provenance import verified_results

    config = adv.AdversarialConfig(eps_grid=(1.0,), epochs=1, attack_sentences=2, budget=1,
                                   attack_steps=1)
    results = adv.run_recipe(tmp_path / "run", seeds=(0,), subset=8, config=config)
    stored = verified_results(tmp_path / "run", adv.KEY)  # the adapters' sha256 checked
    assert stored == json.loads(json.dumps(results))
    assert {"key", "full_run", "subset", "seeds", "config", "finetune_config", "protocol", "split_sizes",
            "arms", "wall_seconds", "artifacts", "device", "versions"} <= set(stored)
    assert stored["full_run"] is False and stored["split_sizes"] == {"train": 8, "validation": 8, "test": 8}
    assert list(stored["arms"]) == list(adv.ARMS) and stored["character_attack_sentences"] == 2
    assert stored["arms"]["clean"]["eps"] is None and stored["arms"]["fgm"]["eps"] == 1.0
    for arm in stored["arms"].values():
        for name in ("test_accuracy", "test_embedding_attack_accuracy", "test_character_attack_accuracy"):
            assert 0 <= arm[name]["mean"] <= 1 and len(arm[name]["values"]) == 1
    assert any(name.startswith("pgd/seed-0/") for name in stored["artifacts"])
    assert len(adv.headline(stored).splitlines()) == 3
    # the saved adapters are the models that were scored
    from companion.prune import polarity_data

    validation = polarity_data(8)["validation"]
    for arm in adv.ARMS:
        model = adv.shipped_model(arm, tmp_path / "run")
        recorded = stored["arms"][arm]["runs"][0]["validation_accuracy"]
        assert ft.evaluate(model, validation).accuracy == pytest.approx(recorded)
    with pytest.raises(ValueError, match="unknown arm"):
        adv.shipped_model("fgsm", tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="companion.recipes adversarial"):
        adv.shipped_results(tmp_path / "nothing")


def test_the_shipped_results_are_a_full_run_chosen_on_validation():
    from companion import adversarial_recipe as adv

    if not (adv.RESULTS_FOLDER / "results.json").exists():
        pytest.skip("the adversarial recipe's results are not shipped")
    results = adv.shipped_results()  # every artifact's sha256 checked
    assert results["full_run"] is True and len(results["seeds"]) >= 3
    assert results["config"]["eps_grid"] == list(adv.AdversarialConfig().eps_grid)
    for name, arm in results["arms"].items():
        assert [r["seed"] for r in arm["runs"]] == results["seeds"]
        if name != "clean":
            scores = {float(e): v["score"] for e, v in arm["eps_search"].items()}
            assert arm["eps"] == max(scores, key=lambda e: (scores[e], -e))
    for name in results["artifacts"]:
        assert (adv.RESULTS_FOLDER / name).stat().st_size <= 5 * 2**20, name


def test_the_recipe_never_writes_into_the_shipped_results():
    from companion import adversarial_recipe as adv
    from companion.recipes import RESULTS

    shipped = RESULTS / adv.KEY / "results.json"
    before = shipped.read_bytes() if shipped.exists() else None
    with pytest.raises(ValueError, match="shipped results"):
        adv.run_recipe(RESULTS / adv.KEY)
    assert (shipped.read_bytes() if shipped.exists() else None) == before
