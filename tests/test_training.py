"""Tests of companion.training: learning, exact resume, atomic checkpoints, accumulation, groups, errors."""

import math

import companion  # noqa: F401 - first: offline Hugging Face cache
import pytest
import torch
from torch import nn
from torch.utils.data import default_collate
from transformers import GPT2Config, GPT2LMHeadModel

from companion import training
from companion.training import (
    BEST,
    LAST,
    NonFiniteLossError,
    epoch_order,
    load_checkpoint,
    lr_factor,
    param_groups,
    split_decay,
    train,
)

SEQ = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt2(dropout: float = 0.0, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=256, n_layer=2, n_head=2, n_embd=32, n_positions=SEQ,
                                      bos_token_id=0, eos_token_id=0, resid_pdrop=dropout,
                                      embd_pdrop=dropout, attn_pdrop=dropout))


def counting_data(n: int, seed: int = 1) -> list[dict]:
    """Sequences (s, s+1, s+2, ...) mod 16: after the first token, the next one is determined."""
    starts = torch.randint(0, 16, (n,), generator=torch.Generator().manual_seed(seed))
    sequences = [(torch.arange(SEQ) + s) % 16 for s in starts]
    return [{"input_ids": x, "labels": x} for x in sequences]


def quick(**kwargs):
    """train() with the tests' defaults."""
    kwargs = {"lr": 3e-3, "batch_size": 8, "progress": False, "log_every": 5, **kwargs}
    return train(**kwargs)


# --- pure functions ----------------------------------------------------------------------------

def test_lr_schedule_warms_up_linearly_then_decays_to_ten_percent():
    f = [lr_factor(s, steps=20, warmup=4) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and f[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(f[4:], f[5:]))  # strictly decreasing after warmup
    assert f[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 15)))


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert epoch_order(10, 0, 0) == epoch_order(10, 0, 0)
    assert sorted(epoch_order(10, 0, 1)) == list(range(10))
    assert epoch_order(10, 0, 0) != epoch_order(10, 0, 1) != epoch_order(10, 1, 1)
    one = training._local_batches(10, 4, 0, 0, 0, rank=0, world=1)
    two = [training._local_batches(10, 4, 0, 0, 0, rank=r, world=2) for r in range(2)]
    for _ in range(5):  # two epochs of 2 batches (2 examples dropped each epoch), then more
        assert next(one) == next(two[0]) + next(two[1])


def test_no_decay_on_biases_norms_and_embeddings():
    model = tiny_gpt2()
    decay, no_decay = split_decay(model)
    assert decay == [f"transformer.h.{i}.{m}.weight" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
            "transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.bias"} <= set(no_decay)
    assert all(n.endswith(".bias") or ".ln_" in n or "wte" in n or "wpe" in n for n in no_decay)
    # lm_head is tied to wte: it appears once, as an embedding (no decay)
    assert model.lm_head.weight is model.transformer.wte.weight and "lm_head.weight" not in decay + no_decay
    groups = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    untied = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 10))
    assert split_decay(untied) == (["2.weight"], ["0.weight", "1.weight", "1.bias", "2.bias"])


def test_no_decay_groups_of_the_books_gpt():
    from companion.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=16))
    decay, no_decay = split_decay(model)
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    assert set(decay) == linears and len(decay) == 8  # 4 Linear layers per block
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= set(no_decay)
    assert sum(p.numel() for g in param_groups(model, 0.1) for p in g["params"]) == model.num_parameters()


# --- training ----------------------------------------------------------------------------------

def test_loss_goes_down_on_a_learnable_task():
    data = counting_data(160)
    result = quick(model=tiny_gpt2(), train_data=data[:128], eval_data=data[128:], steps=40, eval_every=20)
    h = result.history
    assert list(h.columns) == ["step", "train_loss", "eval_loss", "lr", "tokens_per_s", "elapsed"]
    assert h["step"].tolist() == [5, 10, 15, 20, 25, 30, 35, 40] and len(result.losses) == 40
    assert result.losses[0] > 5.0  # about ln(256) = 5.55 at initialisation
    evals = h["eval_loss"].dropna().tolist()  # 3.01 then 2.38 when written
    assert evals[1] < evals[0] and evals[1] < 0.5 * math.log(256)
    assert result.best_eval_loss == h["eval_loss"].min()
    assert (h["tokens_per_s"] > 0).all() and h["elapsed"].is_monotonic_increasing


class Crash(Exception):
    pass


class CrashingData(list):
    """A data set that fails after `limit` examples were read: a simulated crash mid-run."""

    def __init__(self, items, limit):
        super().__init__(items)
        self.limit, self.reads = limit, 0

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.limit:
            raise Crash("simulated crash")
        return super().__getitem__(i)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path):
    data, held_out = counting_data(40), counting_data(16, seed=2)  # 5 batches/epoch: resume crosses epochs
    kwargs = {"eval_data": held_out, "steps": 20, "eval_every": 10, "warmup": 3}
    full = quick(model=tiny_gpt2(dropout=0.1), train_data=data, checkpoint_dir=tmp_path / "a", **kwargs)
    with pytest.raises(Crash):  # the step-10 checkpoint is written, then step 11 cannot read its batch
        quick(model=tiny_gpt2(dropout=0.1), train_data=CrashingData(data, limit=10 * 8),
              checkpoint_dir=tmp_path / "b", **kwargs)
    assert load_checkpoint(tmp_path / "b" / LAST)["state"].step == 10
    resumed = quick(model=tiny_gpt2(dropout=0.1, seed=123), train_data=data, checkpoint_dir=tmp_path / "b",
                    resume=True, **kwargs)
    assert resumed.step == 20 and len(resumed.losses) == 20
    assert resumed.losses == full.losses  # exactly: dropout masks, data order, optimizer state
    assert resumed.history["eval_loss"].tolist()[1::2] == full.history["eval_loss"].tolist()[1::2]
    a, b = (load_checkpoint(tmp_path / d / LAST)["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="cannot resume"):  # another batch size: another data order
        quick(model=tiny_gpt2(), train_data=data, checkpoint_dir=tmp_path / "b", resume=True,
              **{**kwargs, "steps": 30, "batch_size": 4})


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    real_save, before = torch.save, {}

    def failing_save(obj, f, *args, **kwargs):
        if "state" in obj and obj["state"].step == 20:
            before["bytes"] = (tmp_path / LAST).read_bytes()
            f.write(b"\x80partial checkpoint" * 100)
            raise OSError("No space left on device (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    data = counting_data(48)
    with pytest.raises(OSError, match="simulated"):
        quick(model=tiny_gpt2(), train_data=data[:32], eval_data=data[32:], steps=20, eval_every=10,
              checkpoint_dir=tmp_path)
    monkeypatch.undo()
    assert (tmp_path / LAST).read_bytes() == before["bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST, LAST]  # no temporary file left behind
    checkpoint = load_checkpoint(tmp_path / LAST, tiny_gpt2())
    assert checkpoint["state"].step == 10 and len(checkpoint["state"].losses) == 10
    assert load_checkpoint(tmp_path / BEST)["step"] == 10
    resumed = quick(model=tiny_gpt2(), train_data=data[:32], eval_data=data[32:], steps=20, eval_every=10,
                    checkpoint_dir=tmp_path, resume=True)
    assert resumed.step == 20 and resumed.losses[:10] == checkpoint["state"].losses


def test_grad_accumulation_2x8_matches_batch_16():
    data = counting_data(64)
    big = quick(model=tiny_gpt2(), train_data=data, steps=6, batch_size=16)
    accumulated = quick(model=tiny_gpt2(), train_data=data, steps=6, batch_size=8, grad_accum=2)
    assert big.losses == pytest.approx(accumulated.losses, rel=1e-5)
    assert big.losses[-1] < big.losses[0] - 0.1  # the steps did change the model
    # same tokens per optimizer step: 16 sequences of SEQ
    assert big.history["tokens_per_s"].notna().all() and accumulated.history["step"].tolist() == [5, 6]


class Poisoned(nn.Module):
    """Wraps a model; its loss becomes NaN on the `bad`-th forward call."""

    def __init__(self, inner, bad):
        super().__init__()
        self.inner, self.bad, self.calls = inner, bad, 0

    def forward(self, **batch):
        self.calls += 1
        out = self.inner(**batch)
        if self.calls == self.bad:
            out.loss = out.loss * float("nan")
        return out


def test_a_nan_loss_raises_a_clear_error_naming_the_step():
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 of 8 .*lower lr.*clipping.*data"):
        quick(model=Poisoned(tiny_gpt2(), bad=3), train_data=counting_data(32), steps=8, log_every=10)


def test_early_stopping_stops_after_patience_evaluations_without_improvement(tmp_path):
    data = counting_data(48)  # lr 0: the eval loss never improves after the first evaluation
    result = quick(model=tiny_gpt2(), train_data=data[:32], eval_data=data[32:], steps=100, eval_every=5,
                   lr=0.0, early_stopping_patience=2, checkpoint_dir=tmp_path)
    assert result.stopped_early and result.step == 15 and len(result.losses) == 15
    assert result.history["eval_loss"].nunique() == 1
    assert load_checkpoint(tmp_path / LAST)["state"].stopped
    again = quick(model=tiny_gpt2(), train_data=data[:32], eval_data=data[32:], steps=100, eval_every=5,
                  lr=0.0, early_stopping_patience=2, checkpoint_dir=tmp_path, resume=True)
    assert again.step == 15 and again.stopped_early  # a stopped run stays stopped


def test_precision_can_change_between_runs_and_the_model_is_left_unwrapped():
    model, data = tiny_gpt2(), counting_data(16)
    bf16 = quick(model=model, train_data=data, steps=2, mixed_precision="bf16")  # bf16 autocast on CPU
    assert model.forward.__func__ is GPT2LMHeadModel.forward  # accelerate's autocast wrapper is removed
    fp32 = quick(model=model, train_data=data, steps=2, mixed_precision="no")  # no "already initialized"
    with torch.no_grad():
        loss = model(**default_collate(data[:8])).loss
    assert len(bf16.losses) == len(fp32.losses) == 2 and math.isfinite(loss.item())
