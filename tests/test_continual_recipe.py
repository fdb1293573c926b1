"""companion.continual_recipe: the multi-task model, batching, scoring, stages and the recipe, on a
tiny random BERT and synthetic tasks."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from companion import continual_recipe as cr
from companion.continual import EWCPenalty
from companion.metrics import IGNORE_INDEX

SENT = cr.TaskSpec("sent", "sentence", ("neg", "pos"), "accuracy")
TAGS = cr.TaskSpec("tags", "token", ("a", "b", "c"), "accuracy")
NER = cr.TaskSpec("ner", "token", ("O", "B-x", "I-x"), "entity")
SPECS = [SENT, TAGS, NER]


def tiny_encoder(seed=0):
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64))


def tiny_model(specs=SPECS, seed=0):
    encoder = tiny_encoder(0)  # the same "pre-trained" encoder whatever the seed, as MiniLM
    torch.manual_seed(seed)
    return cr.MultiTaskModel(encoder, specs)


def rows(task, n, seed=0):
    """Learnable synthetic rows: sentence label = first token's parity; token label = id % 3."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = [1] + rng.integers(2, 60, size=int(rng.integers(3, 8))).tolist()
        if task.kind == "sentence":
            labels = int(ids[1] % 2)
        else:
            labels = [IGNORE_INDEX] + [i % 3 for i in ids[1:]]
        out.append({"task": task.name, "input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return out


def data(n=48):
    return {t.name: {"train": rows(t, n, 1), "validation": rows(t, 16, 2), "test": rows(t, 16, 3)}
            for t in SPECS}


def small_config(**kw):
    return cr.ContinualConfig(**{"train_size": 48, "epochs": 1, "batch_size": 8, "replay_memory": 12,
                                 "fisher_examples": 8, "ewc_lambdas": (1.0, 1e6), **kw})


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(cr, "new_model", lambda specs, seed: tiny_model(specs, seed))


def test_collate_pads_ids_and_token_labels_and_refuses_mixed_tasks():
    batch = cr.collate([{"task": "tags", "input_ids": [1, 2, 3], "attention_mask": [1, 1, 1],
                         "labels": [IGNORE_INDEX, 0, 2]},
                        {"task": "tags", "input_ids": [1, 5], "attention_mask": [1, 1], "labels": [IGNORE_INDEX, 1]}])
    assert batch["task"] == "tags"
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 5, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 0, 2], [IGNORE_INDEX, 1, IGNORE_INDEX]]
    sentences = cr.collate(rows(SENT, 3))
    assert sentences["labels"].shape == (3,)
    with pytest.raises(ValueError, match="one task"):
        cr.collate(rows(SENT, 1) + rows(TAGS, 1))


def test_heads_give_sentence_and_token_logits_and_unknown_tasks_are_refused():
    model = tiny_model().eval()
    batch = cr.collate(rows(TAGS, 4))
    assert model("sent", batch["input_ids"], batch["attention_mask"]).shape == (4, 2)
    assert model("tags", batch["input_ids"], batch["attention_mask"]).shape == (*batch["input_ids"].shape, 3)
    with pytest.raises(ValueError, match="unknown task 'pos'"):
        model("pos", batch["input_ids"], batch["attention_mask"])
    with pytest.raises(ValueError, match="at least one task"):
        cr.MultiTaskModel(tiny_encoder(), [])


def test_the_sentence_head_pools_over_real_tokens_only():
    model = tiny_model().eval()
    one = cr.collate(rows(SENT, 1))
    padded = {"input_ids": torch.cat([one["input_ids"], torch.zeros(1, 3, dtype=torch.long)], 1),
              "attention_mask": torch.cat([one["attention_mask"], torch.zeros(1, 3, dtype=torch.long)], 1)}
    torch.testing.assert_close(model("sent", padded["input_ids"], padded["attention_mask"]),
                               model("sent", one["input_ids"], one["attention_mask"]), atol=1e-5, rtol=1e-5)


def test_loss_is_cross_entropy_over_labelled_tokens_only():
    model = tiny_model().eval()
    batch = cr.collate(rows(TAGS, 3))
    logits = model("tags", batch["input_ids"], batch["attention_mask"])
    keep = batch["labels"] != IGNORE_INDEX
    by_hand = torch.nn.functional.cross_entropy(logits[keep], batch["labels"][keep])
    torch.testing.assert_close(cr.loss(model, batch), by_hand)


class Oracle(torch.nn.Module):
    """Predicts the labels of its rows (looked up by their ids), or always class `constant`."""

    def __init__(self, rows, n_labels, constant=None):
        super().__init__()
        self.table = {tuple(r["input_ids"]): r["labels"] for r in rows}
        self.n, self.constant = n_labels, constant

    def forward(self, task, input_ids, attention_mask):
        out = []
        for ids, mask in zip(input_ids, attention_mask):
            labels = self.table[tuple(ids[mask.bool()].tolist())]
            if isinstance(labels, int):
                labels = labels if self.constant is None else self.constant
                out.append(torch.nn.functional.one_hot(torch.tensor(labels), self.n).float())
                continue
            tags = [0 if t == IGNORE_INDEX else (t if self.constant is None else self.constant) for t in labels]
            tags += [0] * (len(ids) - len(tags))
            out.append(torch.nn.functional.one_hot(torch.tensor(tags), self.n).float())
        return torch.stack(out)


def test_score_is_accuracy_token_accuracy_or_entity_f1():
    sent, tags = rows(SENT, 20), rows(TAGS, 20)
    assert cr.score(Oracle(sent, 2), SENT, sent) == 1.0
    majority = np.mean([r["labels"] == 0 for r in sent])
    assert cr.score(Oracle(sent, 2, constant=0), SENT, sent) == pytest.approx(majority)
    assert cr.score(Oracle(tags, 3), TAGS, tags) == 1.0
    labelled = [t for r in tags for t in r["labels"] if t != IGNORE_INDEX]
    assert cr.score(Oracle(tags, 3, constant=1), TAGS, tags) == pytest.approx(np.mean(np.array(labelled) == 1))
    ner = [{"task": "ner", "input_ids": [1, 7, 8, 9], "attention_mask": [1] * 4, "labels": [IGNORE_INDEX, 1, 2, 0]},
           {"task": "ner", "input_ids": [1, 9, 7], "attention_mask": [1] * 3, "labels": [IGNORE_INDEX, 0, 1]}]
    assert cr.score(Oracle(ner, 3), NER, ner) == 1.0
    assert cr.score(Oracle(ner, 3, constant=0), NER, ner) == 0.0  # nothing found: F1 0
    with pytest.raises(ValueError, match="no ner rows"):
        cr.score(Oracle(ner, 3), NER, [])


def test_batches_hold_one_task_each_and_every_row_once():
    mixed = rows(SENT, 21) + rows(TAGS, 10)
    out = cr.batches(mixed, 8, torch.Generator().manual_seed(0))
    assert all(len({r["task"] for r in b}) == 1 and len(b) <= 8 for b in out)
    assert sorted(id(r) for b in out for r in b) == sorted(id(r) for r in mixed)
    again = cr.batches(mixed, 8, torch.Generator().manual_seed(0))
    assert [[id(r) for r in b] for b in again] == [[id(r) for r in b] for b in out]


def test_config_refuses_bad_values():
    for bad in ({"train_size": 0}, {"epochs": 0}, {"ewc_lambdas": ()}, {"ewc_lambdas": (1.0, -1.0)},
                {"warmup": 1.0}):
        with pytest.raises(ValueError):
            cr.ContinualConfig(**bad)


def test_a_stage_learns_and_leaves_frozen_parameters_alone():
    model = tiny_model([TAGS])
    frozen = model.encoder.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    train, config = rows(TAGS, 64), small_config(epochs=6, lr=3e-3, head_lr=3e-3)
    start = cr.loss(model.eval(), cr.collate(train)).item()
    run = cr.train_stage(model, train, config, seed=0, lr=config.lr)
    assert run["steps"] == 6 * 8
    assert cr.loss(model.eval(), cr.collate(train)).item() < start
    assert torch.equal(frozen, before)
    assert cr.train_stage(model, train, config, seed=0, lr=1e-3, max_steps=3)["steps"] == 3
    with pytest.raises(ValueError, match="no training rows"):
        cr.train_stage(model, [], config, seed=0, lr=1e-3)


def test_a_strong_ewc_penalty_holds_the_encoder_at_its_anchor():
    config = small_config(epochs=3, lr=3e-3)
    moved = {}
    for lam in (0.0, 1e8):
        model = tiny_model([SENT, TAGS])
        anchor = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
        ones = {n: torch.ones_like(p) for n, p in model.named_parameters()}
        ewc = EWCPenalty.from_model(model, ones, lam)
        cr.train_stage(model, rows(TAGS, 32), config, seed=0, lr=config.lr, penalty=ewc.penalty)
        moved[lam] = sum((p - anchor[n]).norm().item() for n, p in model.encoder.named_parameters())
    assert moved[1e8] < 0.15 * moved[0.0]  # Adam still takes steps of about lr around the anchor


@pytest.mark.parametrize("method", ["sequential", "replay", "ewc"])
def test_run_sequence_fills_the_lower_triangle_of_the_matrix(method, tiny):
    config, d = small_config(), data()
    run = cr.run_sequence(method, SPECS, d, config, seed=0, lam=10.0)
    test = np.array(run["test"], dtype=float)
    assert test.shape == (3, 3)
    assert np.isfinite(test[np.tril_indices(3)]).all() and np.isnan(test[np.triu_indices(3, 1)]).all()
    assert len(run["validation"]) == 3 and len(run["stages"]) == 3
    steps = [s["steps"] for s in run["stages"]]
    extra = 12 if method == "replay" else 0  # the memory's 12 old examples: 2 more batches of 8
    assert steps == [6, 6 + math.ceil(extra / 8), 6 + math.ceil(extra / 8)]


def test_a_copied_first_stage_is_not_trained_again(tiny):
    config, d = small_config(), data()
    first = tiny_model()
    cr.train_stage(first, d["sent"]["train"], config, seed=0, lr=config.lr)
    snapshot = {k: v.clone() for k, v in first.state_dict().items()}
    run = cr.run_sequence("sequential", SPECS, d, config, seed=0, first=first)
    assert len(run["stages"]) == 2
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in snapshot.items())  # the copy trained
    with pytest.raises(ValueError, match="not 'lora'"):
        cr.run_sequence("lora", SPECS, d, config, seed=0)


def test_lora_adapters_round_trip_and_forget_nothing(tiny, tmp_path):
    config, d = small_config(), data()
    run = cr.run_lora(SPECS, d, config, seed=0, save=tmp_path)
    test = np.array(run["test"], dtype=float)
    for j in range(3):
        assert np.all(test[j:, j] == test[j, j])  # every later row repeats the adapter's score
    for j, task in enumerate(SPECS):
        model = cr.load_lora_task(tmp_path / task.name, SPECS, task.name)
        assert cr.score(model, task, d[task.name]["test"]) == pytest.approx(test[j, j])
    with pytest.raises(FileNotFoundError, match="run python -m companion.recipes continual"):
        cr.load_lora_task(tmp_path / "missing", SPECS, "sent")


def test_run_recipe_chooses_lambda_on_validation_and_ships_verified_adapters(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(cr, "load_tasks", lambda config, subset: (SPECS, data(24)))
    results = cr.run_recipe(tmp_path / "run", seeds=(0, 1), config=small_config())
    search = results["ewc_search"]
    best = max(search, key=lambda k: search[k]["validation_mean"])
    assert results["ewc_lambda"] == float(best)
    assert [r["lambda"] for r in results["methods"]["ewc"]["runs"]] == [results["ewc_lambda"]] * 2
    for method in cr.METHODS:
        summary = results["methods"][method]["summary"]
        assert len(summary["average_accuracy"]["values"]) == 2
        mean = cr.matrix(results, method)
        per_seed = [cr.matrix(results, method, seed=s) for s in (0, 1)]
        np.testing.assert_allclose(mean, np.mean(per_seed, 0))
        assert summary["average_accuracy"]["mean"] == pytest.approx(np.mean(mean[-1]), abs=1e-6)
    assert results["methods"]["lora"]["summary"]["forgetting"]["values"] == [0.0, 0.0]
    on_disk = cr.shipped_results(tmp_path / "run")
    assert on_disk == json.loads((tmp_path / "run" / "results.json").read_text())
    assert any(name.startswith("lora-seed-0/sent/") for name in on_disk["artifacts"])
    assert cr.headline(results).count("\n") == 3
    with pytest.raises(ValueError, match="unknown method"):
        cr.matrix(results, "joint")
    with pytest.raises(ValueError, match="no seed 7"):
        cr.matrix(results, "ewc", seed=7)
    (tmp_path / "run" / "lora-seed-0" / "sent" / cr.HEAD_FILE).write_bytes(b"changed")
    with pytest.raises(ValueError, match="differs from the sha256"):
        cr.shipped_results(tmp_path / "run")
