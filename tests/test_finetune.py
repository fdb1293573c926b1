"""companion.finetune: the mean-pooling classifier, its training loop, evaluation and adapters."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from companion import finetune as ft

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_classifier(seed=0, layers=2):
    """A MeanPoolClassifier on a random 2-layer BERT of width 32 (fast, no download), train mode."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, pad_token_id=0)
    return ft.MeanPoolClassifier(BertModel(config, add_pooling_layer=False), num_labels=2, dropout=0.0)


def toy_data(n, seed=0):
    """Sentences of 3-12 random tokens 3..19; label 1 when token 5 occurs (a learnable rule)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 13, (1,), generator=g))
        ids = torch.randint(3, 20, (length,), generator=g)
        if len(rows) % 2:  # half the sentences get the marker
            ids[int(torch.randint(0, length, (1,), generator=g))] = 5
        rows.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long),
                     "labels": torch.tensor(int((ids == 5).any()))})
    return rows


# --- configuration and data -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"method": "prefix"}, "unknown method"),
    ({"lr": 0}, "lr must be positive"),
    ({"epochs": -1}, "epochs must be positive"),
    ({"warmup": 1.0}, "warmup is a fraction"),
    ({"select": "worst"}, "select must be"),
    ({"method": "lora", "layer_decay": 0.8}, "full fine-tuning only"),
    ({"layer_decay": 1.5}, "layer_decay must be in"),
    ({"method": "decoder-lora", "probe_init": True}, "needs a MeanPoolClassifier"),
])
def test_config_refuses_bad_values_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ft.FinetuneConfig(**kwargs)


def test_config_round_trips_through_a_dict():
    config = ft.FinetuneConfig(method="lora", lr=1e-3, epochs=6)
    assert ft.config_from_dict(ft.config_dict(config)) == config


def test_encode_truncates_and_keeps_labels():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ft.MINILM)
    rows = ft.encode(tok, ["a good film .", "bad " * 100], [1, 0], max_length=16)
    assert [len(r["input_ids"]) for r in rows] == [6, 16]  # [CLS] 4 tokens [SEP]; cut at 16
    assert rows[0]["input_ids"][0] == tok.cls_token_id and rows[1]["input_ids"][-1] == tok.sep_token_id
    assert [int(r["labels"]) for r in rows] == [1, 0] and rows[1]["attention_mask"].sum() == 16


def test_encode_refuses_mismatched_or_empty_input():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ft.MINILM)
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        ft.encode(tok, ["a", "b"], [1], 8)
    with pytest.raises(ValueError, match="no sentences"):
        ft.encode(tok, [], [], 8)


def test_collate_pads_on_the_right():
    rows = toy_data(3)
    batch = ft.collate(rows, pad_id=7)
    longest = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, longest)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == r["input_ids"].tolist()
        assert (batch["input_ids"][i, n:] == 7).all() and batch["attention_mask"][i].sum() == n


# --- the classifier and evaluation ----------------------------------------------------------------

def test_mean_pooling_ignores_padding():
    model = tiny_classifier().eval()
    rows = toy_data(4)
    batch = ft.collate(rows)
    together = model.pool(batch["input_ids"], batch["attention_mask"])
    for i, r in enumerate(rows):
        alone = model.pool(r["input_ids"][None], r["attention_mask"][None])
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-4)


def test_forward_returns_the_cross_entropy_of_its_logits():
    model = tiny_classifier().eval()
    batch = ft.collate(toy_data(5))
    out = model(**batch)
    assert out.logits.shape == (5, 2)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, batch["labels"]))


def test_evaluate_keeps_the_order_of_the_sentences():
    model = tiny_classifier()
    rows = toy_data(13)
    result = ft.evaluate(model, rows, batch_size=4)  # sorted by length inside, in order outside
    assert model.training  # evaluate() restores the mode it found
    model.eval()
    for i, r in enumerate(rows):
        logits = model(r["input_ids"][None], r["attention_mask"][None]).logits
        np.testing.assert_allclose(result.probabilities[i], logits.softmax(-1)[0].detach().numpy(),
                                   atol=1e-5)
    assert result.probabilities.shape == (13, 2) and np.allclose(result.probabilities.sum(1), 1)
    assert result.accuracy == pytest.approx((result.predictions == result.labels).mean())


def test_evaluate_refuses_no_data():
    with pytest.raises(ValueError, match="no sentences"):
        ft.evaluate(tiny_classifier(), [])


# --- optimisation ----------------------------------------------------------------------------------

def test_param_groups_put_the_head_apart_decay_layers_and_spare_biases():
    model = tiny_classifier(layers=2)
    config = ft.FinetuneConfig(lr=1e-4, head_lr=1e-2, layer_decay=0.5, weight_decay=0.1)
    groups = ft.param_groups(model, config)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["head.weight"])] == (1e-2, 0.1) and lr_of[id(named["head.bias"])] == (1e-2, 0.0)
    assert lr_of[id(named["encoder.encoder.layer.1.output.dense.weight"])][0] == pytest.approx(1e-4)  # top layer
    assert lr_of[id(named["encoder.encoder.layer.0.output.dense.weight"])][0] == pytest.approx(5e-5)
    assert lr_of[id(named["encoder.embeddings.word_embeddings.weight"])][0] == pytest.approx(2.5e-5)
    assert lr_of[id(named["encoder.encoder.layer.0.output.LayerNorm.weight"])][1] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = ft._linear_schedule(steps=20, warmup=4)
    values = [factor(s) for s in range(21)]
    assert values[:5] == sorted(values[:5]) and values[4] == 1.0
    assert values[4:] == sorted(values[4:], reverse=True) and values[20] == 0.0


@pytest.mark.parametrize("group", [False, True])
def test_batch_order_covers_every_sentence_once_and_repeats_with_its_seed(group):
    lengths = [int(x) for x in torch.randint(1, 60, (203,), generator=torch.Generator().manual_seed(1))]
    batches = ft.batch_order(lengths, 16, torch.Generator().manual_seed(0), group)
    assert sorted(i for b in batches for i in b) == list(range(203))
    assert batches == ft.batch_order(lengths, 16, torch.Generator().manual_seed(0), group)
    assert batches != ft.batch_order(lengths, 16, torch.Generator().manual_seed(1), group)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    if group:  # similar lengths together: far less padding than random batches
        plain = ft.batch_order(lengths, 16, torch.Generator().manual_seed(0), False)
        assert padded < 0.8 * sum(len(b) * max(lengths[i] for i in b) for b in plain)


def toy_config(**kw):
    return ft.FinetuneConfig(**({"lr": 3e-3, "head_lr": 3e-3, "batch_size": 16, "epochs": 4} | kw))


def test_training_learns_a_simple_rule_and_keeps_its_best_epoch():
    model, train, val = tiny_classifier(), toy_data(256, seed=1), toy_data(64, seed=2)
    before = ft.evaluate(model, val).accuracy
    result = ft.train_classifier(model, train, val, toy_config(), seed=0)
    assert result.steps == 4 * 16 and result.epochs == 4 and len(result.history) == 4
    assert result.tokens == 4 * sum(len(r["input_ids"]) for r in train)
    best = max(result.history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert result.best_epoch == best["epoch"]
    after = ft.evaluate(model, val)
    assert after.accuracy == best["val_accuracy"] > before
    assert after.accuracy > 0.85 and not model.training


def test_training_with_select_last_keeps_the_last_epoch_and_repeats_with_its_seed():
    runs = []
    for _ in range(2):
        model = tiny_classifier()
        result = ft.train_classifier(model, toy_data(64), toy_data(32, seed=3),
                                     toy_config(select="last", epochs=2), seed=5)
        runs.append((result, ft.evaluate(model, toy_data(32, seed=3))))
    assert runs[0][0].best_epoch == 2
    assert runs[0][0].history == runs[1][0].history  # same seed, same run
    np.testing.assert_array_equal(runs[0][1].probabilities, runs[1][1].probabilities)


def test_max_steps_cuts_a_run_short_and_bad_arguments_are_refused():
    model = tiny_classifier()
    result = ft.train_classifier(model, toy_data(64), toy_data(16), toy_config(), max_steps=3)
    assert result.steps == 3 and result.epochs == 1
    with pytest.raises(ValueError, match="max_steps must be positive"):
        ft.train_classifier(model, toy_data(8), toy_data(8), toy_config(), max_steps=0)
    with pytest.raises(ValueError, match="must not be empty"):
        ft.train_classifier(model, [], toy_data(8), toy_config())


def test_a_diverging_run_stops_with_a_clear_error():
    model = tiny_classifier()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        ft.train_classifier(model, toy_data(32), toy_data(8), toy_config())


def test_probe_init_copies_a_logistic_regression_into_the_head():
    from sklearn.linear_model import LogisticRegression

    model, rows = tiny_classifier(), toy_data(128)
    accuracy = ft.probe_init(model, rows)
    X, y = ft.mean_pooled(model, rows), np.array([int(r["labels"]) for r in rows])
    probe = LogisticRegression(C=1.0, max_iter=3000).fit(X, y)
    assert accuracy == pytest.approx(probe.score(X, y))
    ours = ft.evaluate(model, rows).probabilities[:, 1]
    np.testing.assert_allclose(ours, probe.predict_proba(X)[:, 1], atol=1e-4)
    with pytest.raises(TypeError, match="MeanPoolClassifier"):
        ft.probe_init(torch.nn.Linear(2, 2), rows)


# --- LoRA on MiniLM, adapters on disk ---------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_lora():
    config = ft.FinetuneConfig(method="lora", lr=1e-3)
    model, tokenizer = ft.build_classifier(config, seed=0)
    return config, model, tokenizer


def test_lora_trains_under_two_percent_of_minilm(minilm_lora):
    _, model, _ = minilm_lora
    trainable, total = ft.trainable_parameters(model)
    assert trainable / total < 0.02 and total > 22_000_000
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in names)
    # every linear layer of the 6 blocks: query key value, attention output, intermediate, output
    assert sum("lora_A" in n for n in names) == 6 * 6


def test_a_saved_adapter_reloads_to_the_same_probabilities(minilm_lora, tmp_path):
    config, model, tokenizer = minilm_lora
    with torch.no_grad():  # LoRA's B starts at zero: move it so a lost adapter would show
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    rows = ft.encode(tokenizer, ["a gripping , funny film .", "dull and far too long ."], [1, 0], 64)
    files = ft.save_adapter(model, tmp_path)
    assert {p.name for p in files} == {"adapter_config.json", "adapter_model.safetensors", ft.HEAD_FILE}
    assert all(p.stat().st_size < 5 * 2**20 for p in files)
    again = ft.load_adapter(tmp_path, config)
    np.testing.assert_allclose(ft.evaluate(again, rows).probabilities, ft.evaluate(model, rows).probabilities,
                               atol=1e-6)


def test_adapters_are_refused_where_there_are_none(tmp_path):
    with pytest.raises(TypeError, match="saves LoRA models"):
        ft.save_adapter(tiny_classifier(), tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved adapter"):
        ft.load_adapter(tmp_path, ft.FinetuneConfig(method="lora"))


# --- statistics ---------------------------------------------------------------------------------------

def test_paired_bootstrap_measures_a_difference_and_its_uncertainty():
    same = ft.paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1])
    assert same["difference"] == same["low"] == same["high"] == 0 and same["p_not_better"] == 1
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.85
    b = a & (rng.random(400) < 0.9)  # b loses about 10% of a's correct answers
    clear = ft.paired_bootstrap(a, b)
    assert clear["low"] > 0 and clear["p_not_better"] < 0.01
    assert clear["difference"] == pytest.approx(a.mean() - b.mean())
    with pytest.raises(ValueError, match="equally long"):
        ft.paired_bootstrap([1, 0], [1])
