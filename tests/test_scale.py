"""companion.scale: FLOP and memory formulas against measurements and the papers' figures."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from companion import scale
from companion.gpt import GPT, GPTConfig


def tiny(n_layer=2, n_embd=32, n_head=4, vocab=64, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=n_layer, n_head=n_head, n_embd=n_embd))


def matrix_weights(model):
    return sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "wpe" not in name)


def test_flops_per_token_matches_pytorchs_counter_for_the_matrix_multiplies():
    model = tiny()
    ids = torch.randint(0, 64, (3, 16))
    with FlopCounterMode(display=False) as counter:
        model(ids, labels=ids).loss.backward()
    counted = counter.get_total_flops() / ids.numel()
    n = matrix_weights(model)
    assert counted == 6 * n  # the fused attention kernel is not counted on CPU
    assert scale.flops_per_token(n, n_layer=2, n_ctx=16, d_model=32) == 6 * n + 12 * 2 * 16 * 32


def test_mfu_is_model_flops_over_peak():
    assert scale.mfu(1000, 6e6, 1e10) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        scale.mfu(1000, 6e6, 0)
    with pytest.raises(ValueError):
        scale.flops_per_token(-1, n_layer=1, n_ctx=1, d_model=1)


def test_state_bytes_equal_the_real_tensors_after_one_adamw_step():
    model = tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 64, (2, 16))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    n = sum(p.numel() for p in model.parameters())
    real = scale.StateBytes(
        weights=sum(p.nbytes for p in model.parameters()),
        gradients=sum(p.grad.nbytes for p in model.parameters()),
        optimizer=sum(v.nbytes for s in optimizer.state.values() for k, v in s.items()
                      if k in ("exp_avg", "exp_avg_sq")))
    assert scale.state_bytes(n) == real
    assert scale.state_bytes(n).total == 16 * n
    mixed = scale.state_bytes(n, weight_bytes=2, grad_bytes=2, master_bytes=4)
    assert mixed.total == 16 * n  # 2 + 2 + 12: mixed precision does not shrink the state
    with pytest.raises(ValueError):
        scale.state_bytes(-1)


def test_zero_bytes_reproduce_the_papers_figure_1():
    # Rajbhandari et al. 2020, figure 1: 7.5B parameters, 64 devices, K = 12
    gb = [scale.zero_bytes(7.5e9, 64, stage) / 1e9 for stage in range(4)]
    assert [round(x, 1) for x in gb] == [120.0, 31.4, 16.6, 1.9]
    assert scale.zero_bytes(100, 1, 3) == scale.zero_bytes(100, 1, 0) == 1600
    with pytest.raises(ValueError, match="stages"):
        scale.zero_bytes(100, 2, 4)
    with pytest.raises(ValueError):
        scale.zero_bytes(100, 0, 1)


@pytest.mark.parametrize("n_layer,n_embd,n_head,batch,seq,vocab",
                         [(1, 32, 2, 2, 16, 64), (3, 32, 4, 3, 32, 50), (2, 64, 8, 1, 7, 64)])
def test_activation_formula_equals_what_autograd_saves(n_layer, n_embd, n_head, batch, seq, vocab):
    model = tiny(n_layer, n_embd, n_head, vocab)
    ids = torch.randint(0, vocab, (batch, seq))
    measured = scale.saved_activation_bytes(lambda: model(ids, labels=ids), model)
    assert measured == scale.gpt_activation_bytes(model.config, batch, seq)


def test_saved_activation_bytes_excludes_parameters_and_counts_storages_once():
    w = torch.nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    module = torch.nn.Module()
    module.w = w
    # x @ w saves x and w; (x @ w) * (x @ w) saves the product once (one storage)
    assert scale.saved_activation_bytes(lambda: x @ w, module) == x.nbytes
    assert scale.saved_activation_bytes(lambda: x @ w) == x.nbytes + w.nbytes

    def square():
        y = x @ w
        return y * y

    assert scale.saved_activation_bytes(square, module) == x.nbytes + 4 * 8 * 4
    with pytest.raises(ValueError):
        scale.gpt_activation_bytes(tiny().config, 0, 4)


def test_peak_bytes_sees_a_large_temporary_allocation():
    def allocate():
        big = torch.ones(1_000_000)  # 4 MB, freed at the end
        return float(big.sum())

    peak = scale.peak_bytes(allocate)
    assert 4_000_000 <= peak < 4_500_000


def test_peak_of_a_training_step_lies_between_activations_and_activations_plus_gradients():
    model = tiny(2, 64, 4, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, 64, (8, 32))

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        optimizer.step()

    step()  # the optimizer's state exists from the first step on
    activations = scale.gpt_activation_bytes(model.config, 8, 32)
    gradients = scale.state_bytes(sum(p.numel() for p in model.parameters())).gradients
    peak = scale.peak_bytes(step)
    assert activations <= peak <= 1.1 * (activations + gradients)


def test_median_seconds_and_matmul_peak():
    calls = []
    assert scale.median_seconds(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5
    with pytest.raises(ValueError):
        scale.median_seconds(lambda: None, repeats=0)
    rate = scale.matmul_peak(size=64, repeats=2)
    assert math.isfinite(rate) and rate > 0
    with pytest.raises(ValueError):
        scale.matmul_peak(size=0)


def test_gradient_checkpointing_gives_the_same_gradients_with_less_memory():
    from companion.gpt import to_hf_gpt2

    hf = to_hf_gpt2(tiny(2, 64, 4, 64)).train()
    ids = torch.randint(0, 64, (4, 32))

    def forward_backward():
        hf.zero_grad(set_to_none=True)
        hf(input_ids=ids, labels=ids).loss.backward()

    stored = scale.peak_bytes(forward_backward)
    plain = [p.grad.clone() for p in hf.parameters()]
    hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    recomputed = scale.peak_bytes(forward_backward)
    assert all(torch.equal(a, p.grad) for a, p in zip(plain, hf.parameters()))
    assert recomputed < 0.7 * stored
