"""companion.distill: the distillation loss against a hand computation and its limits; training."""

import math

import pytest
import torch
from transformers import BertConfig, BertModel

from companion import distill
from companion.finetune import MeanPoolClassifier
from companion.recipes import shipped_results

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_matches_a_hand_computation():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[3.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1])
    T, alpha = 2.0, 0.3
    kl = 0.0
    ce = 0.0
    for row in range(2):
        ps = [math.exp(v / T) / sum(math.exp(u / T) for u in s[row].tolist()) for v in s[row].tolist()]
        pt = [math.exp(v / T) / sum(math.exp(u / T) for u in t[row].tolist()) for v in t[row].tolist()]
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps)) / 2
        p1 = [math.exp(v) / sum(math.exp(u) for u in s[row].tolist()) for v in s[row].tolist()]
        ce += -math.log(p1[labels[row]]) / 2
    expected = alpha * T ** 2 * kl + (1 - alpha) * ce
    got = distill.distillation_loss(s, t, labels, temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_alpha_0_is_cross_entropy_and_alpha_1_needs_no_labels():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    labels = torch.randint(0, 3, (8,), generator=g)
    for T in (1.0, 4.0):
        assert torch.allclose(distill.distillation_loss(s, t, labels, temperature=T, alpha=0.0),
                              torch.nn.functional.cross_entropy(s, labels))
    soft = distill.distillation_loss(s, t, None, temperature=2.0, alpha=1.0)
    assert soft.item() > 0
    assert distill.distillation_loss(t, t, None, temperature=2.0, alpha=1.0).item() == pytest.approx(0, abs=1e-6)


def test_soft_loss_is_kl_times_t_squared():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
    for T in (1.0, 2.0, 5.0):
        kl = torch.nn.functional.kl_div((s / T).log_softmax(-1), (t / T).softmax(-1), reduction="batchmean")
        got = distill.distillation_loss(s, t, None, temperature=T, alpha=1.0)
        assert torch.allclose(got, T ** 2 * kl, atol=1e-6)


def test_t_squared_keeps_the_gradient_scale_at_high_temperature():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(64, 2, generator=g)
    norms = []
    for T in (4.0, 8.0, 16.0):
        s = torch.randn(64, 2, generator=torch.Generator().manual_seed(3)).requires_grad_()
        distill.distillation_loss(s, t, None, temperature=T, alpha=1.0).backward()
        norms.append(s.grad.norm().item())
    # without T^2 the gradient would shrink like 1/T^2 (16x from T=4 to 16); with it, like 1/T at most
    assert norms[-1] > norms[0] / 5


def test_only_the_student_gets_gradients():
    s = torch.randn(4, 2, requires_grad=True)
    t = torch.randn(4, 2, requires_grad=True)
    distill.distillation_loss(s, t, torch.tensor([0, 1, 0, 1]), temperature=2.0, alpha=0.5).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0, "alpha": 0.5}, "temperature must be positive"),
    ({"temperature": 1.0, "alpha": 1.5}, r"alpha weighs the soft loss, in \[0, 1\]"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distill.distillation_loss(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([0, 1]), **kwargs)


def test_bad_shapes_and_missing_labels():
    with pytest.raises(ValueError, match="differ in shape"):
        distill.distillation_loss(torch.zeros(2, 2), torch.zeros(2, 3), None, temperature=1.0, alpha=1.0)
    with pytest.raises(ValueError, match="labels are needed"):
        distill.distillation_loss(torch.zeros(2, 2), torch.zeros(2, 2), None, temperature=1.0, alpha=0.5)


def test_soften_flattens_with_temperature():
    z = torch.tensor([3.0, 1.0, 0.0])
    entropies = [-(p * p.log()).sum().item() for p in (distill.soften(z, T) for T in (0.5, 1, 2, 8))]
    assert entropies == sorted(entropies)
    assert torch.allclose(distill.soften(z, 1.0), z.softmax(-1))


def tiny(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, pad_token_id=0)
    return MeanPoolClassifier(BertModel(config, add_pooling_layer=False), dropout=0.0)


def test_a_student_learns_to_match_its_teacher():
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(1, 30, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g)}
            for _ in range(64)]
    for e in data:
        e["attention_mask"] = torch.ones(len(e["input_ids"]), dtype=torch.long)
        e["labels"] = torch.tensor(int((e["input_ids"] < 10).sum() > 2))
    teacher_logits = 3 * torch.randn(64, 2, generator=g)
    student = tiny()
    config = distill.DistillConfig(epochs=8, lr=3e-3, head_lr=3e-3, batch_size=16)
    before = distill.distillation_loss(distill.logits_of(student, data), teacher_logits, None,
                                       temperature=2.0, alpha=1.0).item()
    run = distill.train_student(student, data, teacher_logits, data[:16], temperature=2.0, alpha=1.0,
                                config=config)
    after = distill.distillation_loss(distill.logits_of(student, data), teacher_logits, None,
                                      temperature=2.0, alpha=1.0).item()
    assert run["steps"] == 32 and len(run["history"]) == 8
    assert after < before
    with pytest.raises(ValueError, match="teacher logits for"):
        distill.train_student(student, data, teacher_logits[:3], data, temperature=1.0, alpha=1.0)


def test_logits_of_keeps_the_order():
    model = tiny().eval()
    data = [{"input_ids": torch.arange(1, n + 1), "attention_mask": torch.ones(n, dtype=torch.long),
             "labels": torch.tensor(0)} for n in (7, 2, 5)]
    got = distill.logits_of(model, data, batch_size=2)
    for i, e in enumerate(data):
        one = model(input_ids=e["input_ids"][None], attention_mask=e["attention_mask"][None]).logits[0]
        torch.testing.assert_close(got[i], one, atol=1e-5, rtol=1e-5)


def test_recipe_refuses_to_write_into_the_shipped_results():
    from companion.recipes import RESULTS

    with pytest.raises(ValueError, match="shipped results"):
        distill.run_recipe(RESULTS / "distill")


def test_shipped_distill_results_are_a_full_run_with_one_intact_student():
    results = shipped_results("distill")  # checks every sha256
    assert results["full_run"] is True and results["seeds"] == [0, 1, 2]
    best = max(results["variants"], key=lambda v: results["variants"][v]["validation_accuracy"]["mean"])
    assert list(results["artifacts"]) == [f"student-{best}-seed-0.safetensors"]
    for v in results["variants"].values():
        assert len(v["runs"]) == 3 and v["test_accuracy"]["values"] == [r["test_accuracy"] for r in v["runs"]]
