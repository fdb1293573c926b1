"""companion.continual: Fisher diagonal, EWC penalty, replay, and forgetting metrics."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from companion import continual
from companion import finetune as ft
from companion.robust import classifier_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_classifier(seed=0):
    """A MeanPoolClassifier on a random 1-layer BERT of width 16, in train mode."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, pad_token_id=0)
    return ft.MeanPoolClassifier(BertModel(config, add_pooling_layer=False), num_labels=2)


def toy_data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(3, 8, (1,), generator=g))
        rows.append({"input_ids": torch.randint(1, 20, (length,), generator=g),
                     "attention_mask": torch.ones(length, dtype=torch.long),
                     "labels": torch.randint(0, 2, (), generator=g)})
    return rows


class TwoParams(nn.Module):
    def __init__(self, a=1.0, b=2.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor([b]))


# --- EWC -------------------------------------------------------------------------------------

def test_ewc_penalty_matches_a_hand_computation():
    ewc = continual.EWCPenalty(anchor={"a": torch.tensor(0.5), "b": torch.tensor([1.0])},
                               fisher={"a": torch.tensor(2.0), "b": torch.tensor([3.0])}, lam=4.0)
    # 4 / 2 * (2 * (1 - 0.5)^2 + 3 * (2 - 1)^2) = 2 * 3.5
    assert math.isclose(float(ewc.penalty(TwoParams()).detach()), 7.0, rel_tol=1e-6)
    frozen = TwoParams()
    frozen.b.requires_grad_(False)  # only trainable parameters count
    assert math.isclose(float(ewc.penalty(frozen).detach()), 2 * 0.5, rel_tol=1e-6)


def test_ewc_penalty_is_zero_at_the_anchor_and_the_anchor_is_a_copy():
    model = tiny_classifier()
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    ewc = continual.EWCPenalty.from_model(model, fisher, lam=10.0)
    assert float(ewc.penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.head.bias.add_(1.0)
    assert float(ewc.penalty(model).detach()) > 0


def test_the_gradient_of_the_penalty_is_lambda_f_times_the_offset():
    model, lam = tiny_classifier(), 3.0
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    ewc = continual.EWCPenalty.from_model(model, fisher, lam)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ewc.penalty(model).backward()
    for name, p in model.named_parameters():
        expected = lam * fisher[name] * (p.detach() - ewc.anchor[name])
        assert torch.allclose(p.grad, expected, atol=1e-6), name


def test_ewc_refuses_bad_input():
    one = {"a": torch.tensor(1.0)}
    with pytest.raises(ValueError, match="lam"):
        continual.EWCPenalty(one, one, lam=-1.0)
    with pytest.raises(ValueError, match="same parameters"):
        continual.EWCPenalty(one, {"b": torch.tensor(1.0)}, lam=1.0)
    with pytest.raises(ValueError, match="shape"):
        continual.EWCPenalty(one, {"a": torch.ones(2)}, lam=1.0)
    with pytest.raises(ValueError, match="lacks"):
        continual.EWCPenalty.from_model(TwoParams(), {"c": torch.tensor(1.0)}, lam=1.0)
    with pytest.raises(ValueError, match="no trainable parameter"):
        continual.EWCPenalty({"c": torch.tensor(1.0)}, {"c": torch.tensor(1.0)}, 1.0).penalty(TwoParams())


# --- Fisher ----------------------------------------------------------------------------------

def reference_fisher(model, data):
    """The mean over examples of the squared gradient of each one's loss, by a plain loop."""
    model.eval()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    for example in data:
        model.zero_grad()
        classifier_loss(model, ft.collate([example])).backward()
        for n in total:
            total[n] += model.get_parameter(n).grad ** 2
    model.zero_grad(set_to_none=True)
    return {n: t / len(data) for n, t in total.items()}


def test_fisher_per_example_is_the_mean_of_squared_gradients():
    model, data = tiny_classifier(), toy_data(6)
    model.encoder.embeddings.position_embeddings.weight.requires_grad_(False)
    fisher = continual.fisher_diagonal(model, data)
    assert model.training and all(p.grad is None for p in model.parameters())
    expected = reference_fisher(model, data)
    assert set(fisher) == set(expected) and "encoder.embeddings.position_embeddings.weight" not in fisher
    for name in expected:
        assert torch.allclose(fisher[name], expected[name], rtol=1e-4, atol=1e-9), name


def test_fisher_per_batch_squares_each_batch_mean_gradient():
    model, data = tiny_classifier(), toy_data(6)
    per_batch = continual.fisher_diagonal(model, data, per_example=False, batch_size=3)
    model.eval()
    expected = {}
    for rows in (data[:3], data[3:]):
        grads = torch.autograd.grad(classifier_loss(model, ft.collate(rows)), list(model.parameters()))
        for (name, _), g in zip(model.named_parameters(), grads):
            expected[name] = expected.get(name, 0) + g ** 2 / 2
    for name, value in expected.items():
        assert torch.allclose(per_batch[name], value, rtol=1e-4, atol=1e-9), name


def test_fisher_refuses_bad_input():
    model = tiny_classifier()
    with pytest.raises(ValueError, match="no examples"):
        continual.fisher_diagonal(model, [])
    with pytest.raises(ValueError, match="batch_size"):
        continual.fisher_diagonal(model, toy_data(2), per_example=False, batch_size=0)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        continual.fisher_diagonal(model, toy_data(2))


# --- replay ----------------------------------------------------------------------------------

def test_replay_mix_is_deterministic_keeps_the_fraction_and_its_inputs():
    new, old = [f"new{i}" for i in range(30)], [f"old{i}" for i in range(50)]
    new_copy, old_copy = list(new), list(old)
    mixed = continual.replay_mix(new, old, 0.25, seed=1)
    assert new == new_copy and old == old_copy
    assert mixed == continual.replay_mix(new, old, 0.25, seed=1)
    assert mixed != continual.replay_mix(new, old, 0.25, seed=2)
    replayed = [x for x in mixed if x.startswith("old")]
    assert len(mixed) == 40 and len(replayed) / len(mixed) == 0.25
    assert sorted(x for x in mixed if x.startswith("new")) == sorted(new)  # every new one, once
    assert len(set(replayed)) == 10 and set(replayed) <= set(old)
    assert any(x.startswith("old") for x in mixed[:30])  # shuffled, not appended
    assert sorted(continual.replay_mix(new, old, 0.0)) == sorted(new)


def test_replay_mix_refuses_bad_input():
    with pytest.raises(ValueError, match="fraction"):
        continual.replay_mix([1, 2], [3], 1.0)
    with pytest.raises(ValueError, match="needs 4 old examples"):
        continual.replay_mix([1, 2, 3, 4], [5, 6], 0.5)
    with pytest.raises(ValueError, match="new_data is empty"):
        continual.replay_mix([], [1], 0.5)


def test_reservoir_keeps_a_uniform_sample():
    buffer = continual.ReplayBuffer(capacity=5, seed=0)
    buffer.add(range(3))
    assert buffer.examples == [0, 1, 2] and buffer.seen == 3
    buffer.add(range(3, 20))
    assert len(buffer) == 5 and buffer.seen == 20 and set(buffer.examples) <= set(range(20))
    again = continual.ReplayBuffer(capacity=5, seed=0)
    again.add(range(20))
    assert again.examples == buffer.examples
    counts = np.zeros(20)
    for seed in range(2000):
        b = continual.ReplayBuffer(capacity=5, seed=seed)
        b.add(range(20))
        counts[b.examples] += 1
    assert np.allclose(counts / 2000, 5 / 20, atol=0.04)  # every example kept with p = 1/4
    with pytest.raises(ValueError, match="capacity"):
        continual.ReplayBuffer(0)


# --- metrics ---------------------------------------------------------------------------------

NAN = float("nan")
ACC = [[0.90, NAN, NAN],  # after training on task 0
       [0.95, 0.80, NAN],  # after task 1: task 0 even improved
       [0.60, 0.85, 0.85]]  # after task 2


def test_metrics_on_a_hand_made_matrix():
    m = continual.continual_metrics(ACC, baseline=[0.5, NAN, 0.1])
    assert math.isclose(m["average_accuracy"], (0.60 + 0.85 + 0.85) / 3)
    assert math.isclose(m["bwt"], ((0.60 - 0.90) + (0.85 - 0.80)) / 2)
    # forgetting: task 0 from its best (0.95, after task 1) to 0.60; task 1: 0.80 -> 0.85
    assert np.allclose(continual.forgetting_per_task(ACC), [0.35, -0.05])
    assert math.isclose(m["forgetting"], 0.15)
    assert math.isnan(m["fwt"])  # acc[0][1] was not measured
    full = [[0.9, 0.3, 0.2], [0.95, 0.8, 0.4], [0.6, 0.85, 0.85]]
    fwt = continual.continual_metrics(full, baseline=[0.5, 0.25, 0.1])["fwt"]
    assert math.isclose(fwt, ((0.3 - 0.25) + (0.4 - 0.1)) / 2)


def test_accuracy_frame_labels_stages_and_tasks():
    frame = continual.accuracy_frame(ACC, ["pos", "neg", "mix"])
    assert list(frame.columns) == ["pos", "neg", "mix"]
    assert list(frame.index) == ["after pos", "after neg", "after mix"]
    assert frame.loc["after neg", "pos"] == 0.95
    assert list(continual.accuracy_frame(ACC).columns) == ["task 0", "task 1", "task 2"]


@pytest.mark.parametrize("acc, message", [([[0.5]], "at least 2"), ([[0.5, 0.4]], "square"),
                                          ([[0.5, 0.1], [NAN, 0.7]], "finite")])
def test_metrics_refuse_bad_matrices(acc, message):
    with pytest.raises(ValueError, match=message):
        continual.continual_metrics(acc)


def test_metrics_refuse_bad_baselines_and_names():
    with pytest.raises(ValueError, match="one accuracy per task"):
        continual.continual_metrics(ACC, baseline=[0.5, 0.5])
    with pytest.raises(ValueError, match="2 task names for 3 tasks"):
        continual.accuracy_frame(ACC, ["a", "b"])
