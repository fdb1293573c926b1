"""Tests of companion.training: learning, exact resume, atomic checkpoints, accumulation, groups, errors."""

import math
from pathlib import Path

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
    assert set(decay) == linears and len(decay) == 12  # 6 Linear layers per block (q, k, v, out, 2 MLP)
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
    assert load_checkpoint(tmp_path / "b" / LAST)["state"]["step"] == 10
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
        if "state" in obj and obj["state"]["step"] == 20:
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
    assert checkpoint["state"]["step"] == 10 and len(checkpoint["state"]["losses"]) == 10
    assert load_checkpoint(tmp_path / BEST)["step"] == 10
    resumed = quick(model=tiny_gpt2(), train_data=data[:32], eval_data=data[32:], steps=20, eval_every=10,
                    checkpoint_dir=tmp_path, resume=True)
    assert resumed.step == 20 and resumed.losses[:10] == checkpoint["state"]["losses"]


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
    assert load_checkpoint(tmp_path / LAST)["state"]["stopped"]
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


# --- non-finite values, crashes, planted files, changed settings, bad arguments, device ---------

class NanGradient(nn.Module):
    """Wraps a model: on the `bad`-th forward call its loss stays finite but every gradient is NaN."""

    def __init__(self, inner, bad):
        super().__init__()
        self.inner, self.bad, self.calls = inner, bad, 0

    def forward(self, **batch):
        out = self.inner(**batch)
        if self.training:
            self.calls += 1
            if self.calls == self.bad:
                out.loss.register_hook(lambda grad: grad * float("nan"))
        return out


class NanEval(nn.Module):
    """Wraps a model: its eval loss is NaN from the `bad`-th evaluation batch on."""

    def __init__(self, inner, bad):
        super().__init__()
        self.inner, self.bad, self.evals = inner, bad, 0

    def forward(self, **batch):
        out = self.inner(**batch)
        if not self.training:
            self.evals += 1
            if self.evals >= self.bad:
                out.loss = out.loss * float("nan")
        return out


class NanWeight(nn.Module):
    """Wraps a model with an extra parameter outside the loss, set to NaN on the `bad`-th forward call."""

    def __init__(self, inner, bad):
        super().__init__()
        self.inner, self.bad, self.calls, self.extra = inner, bad, 0, nn.Parameter(torch.zeros(3))

    def forward(self, **batch):
        if self.training:
            self.calls += 1
            if self.calls == self.bad:
                with torch.no_grad():
                    self.extra.fill_(float("nan"))
        return self.inner(**batch)


def assert_last_is_finite_at(folder, step):
    checkpoint = load_checkpoint(folder / LAST)
    assert checkpoint["state"]["step"] == step
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


@pytest.mark.parametrize("max_grad_norm", [1.0, None])
def test_a_nan_gradient_on_a_checkpoint_step_stops_the_run_before_its_checkpoint(tmp_path, max_grad_norm):
    data = counting_data(48)
    model = NanGradient(tiny_gpt2(), bad=20)
    with pytest.raises(NonFiniteLossError, match=r"gradient norm is nan at step 20 of 30 .*no checkpoint"):
        quick(model=model, train_data=data[:32], eval_data=data[32:], steps=30, eval_every=10,
              max_grad_norm=max_grad_norm, checkpoint_dir=tmp_path)
    assert_last_is_finite_at(tmp_path, 10)
    assert load_checkpoint(tmp_path / BEST)["step"] == 10


def test_a_nan_eval_loss_stops_the_run_before_its_checkpoint(tmp_path):
    data = counting_data(48)  # 16 eval examples: 2 batches per evaluation, the 3rd is the 2nd evaluation's
    with pytest.raises(NonFiniteLossError, match=r"eval loss is nan at step 20 of 30"):
        quick(model=NanEval(tiny_gpt2(), bad=3), train_data=data[:32], eval_data=data[32:], steps=30,
              eval_every=10, checkpoint_dir=tmp_path)
    assert_last_is_finite_at(tmp_path, 10)


def test_a_nan_weight_stops_the_run_before_its_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"a weight is nan at step 20 of 30"):
        quick(model=NanWeight(tiny_gpt2(), bad=20), train_data=counting_data(32), steps=30, eval_every=10,
              checkpoint_dir=tmp_path)
    checkpoint = load_checkpoint(tmp_path / LAST)
    assert checkpoint["state"]["step"] == 10 and torch.isfinite(checkpoint["model"]["extra"]).all()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The checkpoints of a 20-step run whose eval loss improves at both evaluations."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    data = counting_data(48)
    quick(model=tiny_gpt2(), train_data=data[:32], eval_data=data[32:], steps=20, eval_every=10,
          checkpoint_dir=folder)
    assert load_checkpoint(folder / BEST)["step"] == 20
    return folder


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])  # the writes: last@10, best@10, last@20, best@20
def test_best_pt_is_right_after_a_crash_at_any_checkpoint_write(tmp_path, monkeypatch, uninterrupted,
                                                                 crash_at, when):
    real_save, calls = training.atomic_save, []

    def crashing_save(obj, path):
        calls.append(path)
        if len(calls) == crash_at and when == "before":
            raise Crash(f"killed before writing {path}")
        real_save(obj, path)
        if len(calls) == crash_at:
            raise Crash(f"killed after writing {path}")

    monkeypatch.setattr(training, "atomic_save", crashing_save)
    data = counting_data(48)
    kwargs = {"train_data": data[:32], "eval_data": data[32:], "steps": 20, "eval_every": 10,
              "checkpoint_dir": tmp_path}
    with pytest.raises(Crash):
        quick(model=tiny_gpt2(), **kwargs)
    monkeypatch.undo()
    quick(model=tiny_gpt2(), resume=True, **kwargs)  # from scratch when the crash came before last.pt
    for name in (BEST, LAST):
        want, got = load_checkpoint(uninterrupted / name), load_checkpoint(tmp_path / name)
        assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"]), name
    want, got = load_checkpoint(uninterrupted / BEST), load_checkpoint(tmp_path / BEST)
    assert (got["step"], got["eval_loss"]) == (want["step"], want["eval_loss"])


def test_a_run_without_eval_data_deletes_the_best_pt_of_an_earlier_run(tmp_path):
    data = counting_data(48)
    quick(model=tiny_gpt2(), train_data=data[:32], eval_data=data[32:], steps=10, eval_every=10,
          checkpoint_dir=tmp_path)
    assert (tmp_path / BEST).exists()
    quick(model=tiny_gpt2(), train_data=data[:32], steps=10, eval_every=10, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]  # no best.pt of another run beside it


def test_stale_temporary_files_are_deleted_when_training_starts(tmp_path):
    stale = [tmp_path / name for name in (".last.pt.k1ll3d.tmp", ".best.pt.abc_12.tmp", ".write-check.x.tmp")]
    kept = [tmp_path / "notes.txt", tmp_path / ".last.pt.keep", tmp_path / "last.pt.tmp"]
    for path in stale + kept:
        path.write_bytes(b"\x80partial")
    quick(model=tiny_gpt2(), train_data=counting_data(16), steps=1, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LAST] + [p.name for p in kept])


class Planted:
    """A pickle that runs code when loaded: it creates a folder."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_a_planted_pickle_is_refused_without_running_its_code(tmp_path):
    import pickle

    marker = tmp_path / "code-ran"
    torch.save({"state": Planted(marker), "config": {}, "model": {}}, tmp_path / LAST)
    with pytest.raises(pickle.UnpicklingError, match="refused to load"):
        load_checkpoint(tmp_path / LAST)
    with pytest.raises(pickle.UnpicklingError, match="refused to load"):
        quick(model=tiny_gpt2(), train_data=counting_data(16), steps=2, checkpoint_dir=tmp_path, resume=True)
    assert not marker.exists()


def test_a_checkpoint_holds_only_tensors_and_plain_data(tmp_path):
    quick(model=tiny_gpt2(dropout=0.1), train_data=counting_data(16), steps=2, checkpoint_dir=tmp_path)
    plain = (torch.Tensor, dict, list, tuple, str, int, float, bool, type(None))

    def walk(obj):
        assert isinstance(obj, plain), type(obj)
        if isinstance(obj, dict):
            for key, value in obj.items():
                walk(key), walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)

    walk(torch.load(tmp_path / LAST, weights_only=True))


def test_resuming_with_changed_settings_names_them(tmp_path):
    data = counting_data(32)
    quick(model=tiny_gpt2(), train_data=data, steps=10, eval_every=5, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"cannot resume .*: lr 0\.003 -> 0\.001; steps 10 -> 20\. .*"
                                         r"allow_changes=True"):
        quick(model=tiny_gpt2(), train_data=data, steps=20, lr=1e-3, eval_every=5, checkpoint_dir=tmp_path,
              resume=True)
    for name, change in [("warmup", {"warmup": 2}), ("weight_decay", {"weight_decay": 0.0}),
                         ("max_grad_norm", {"max_grad_norm": None}), ("seed", {"seed": 1}),
                         ("grad_accum", {"grad_accum": 2}), ("n_train", {"train_data": data[:24]})]:
        with pytest.raises(ValueError, match=f"cannot resume .*: {name} "):
            quick(**{"model": tiny_gpt2(), "train_data": data, "steps": 10, "eval_every": 5,
                     "checkpoint_dir": tmp_path, "resume": True, **change})
    assert load_checkpoint(tmp_path / LAST)["state"]["step"] == 10  # nothing was written


def test_allow_changes_continues_with_the_new_settings(tmp_path):
    data, sizes = counting_data(40), []

    def collate(examples):
        sizes.append(len(examples))
        return default_collate(examples)

    first = quick(model=tiny_gpt2(), train_data=data, steps=7, eval_every=7, warmup=2,
                  checkpoint_dir=tmp_path)
    assert first.step == 7
    sizes.clear()
    resumed = quick(model=tiny_gpt2(), train_data=data, steps=20, lr=1e-3, warmup=2, batch_size=4,
                    eval_every=5, collate_fn=collate, checkpoint_dir=tmp_path, resume=True,
                    allow_changes=True)
    assert resumed.step == 20 and len(resumed.losses) == 20 and resumed.losses[:7] == first.losses
    assert sizes == [4] * 13  # the new batch size
    lrs = resumed.history.set_index("step")["lr"]  # the lr of each window's last step: the new schedule
    for step in (10, 15, 20):
        assert lrs[step] == pytest.approx(1e-3 * lr_factor(step - 1, steps=20, warmup=2))
    assert load_checkpoint(tmp_path / LAST)["config"]["lr"] == 1e-3


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"batch_size": -8}, {"steps": 0}, {"grad_accum": 0},
                                 {"warmup": -1}, {"lr": -1e-3}, {"lr": float("nan")}, {"weight_decay": -0.1},
                                 {"max_grad_norm": -1.0}, {"eval_every": 0}, {"log_every": 0},
                                 {"eval_batches": 0}, {"early_stopping_patience": 0}, {"steps": 2.5}])
def test_nonsense_arguments_raise_a_clear_value_error(bad):
    name, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=rf"train\(\) got {name}={value!r} \(must be "):
        quick(**{"model": tiny_gpt2(), "train_data": counting_data(16), "steps": 2, **bad})


class Counting(nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, **batch):
        self.calls += 1
        return self.inner(**batch)


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path):
    model, path = Counting(tiny_gpt2()), tmp_path / "file"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match="checkpoint_dir .*file is a file, not a folder"):
        quick(model=model, train_data=counting_data(16), steps=2, checkpoint_dir=path)
    with pytest.raises(ValueError, match="checkpoint_dir .*sub cannot be created or written"):
        quick(model=model, train_data=counting_data(16), steps=2, checkpoint_dir=path / "sub")
    assert model.calls == 0 and path.read_text() == "not a folder"


def test_a_checkpoint_dir_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    import tempfile

    real_mkstemp, folder = tempfile.mkstemp, tmp_path / "read-only"

    def mkstemp(*args, dir=None, **kwargs):  # what a read-only folder does (root writes to any folder)
        if dir is not None and Path(dir) == folder:
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    model = Counting(tiny_gpt2())
    with pytest.raises(ValueError, match="read-only cannot be created or written .*Permission denied"):
        quick(model=model, train_data=counting_data(16), steps=2, checkpoint_dir=folder)
    assert model.calls == 0


def test_companion_device_cpu_trains_on_the_cpu(monkeypatch):
    monkeypatch.setenv("COMPANION_DEVICE", "cpu")
    model = tiny_gpt2()
    result = quick(model=model, train_data=counting_data(16), steps=2)
    assert result.step == 2 and next(model.parameters()).device == torch.device("cpu")


def test_companion_device_cpu_wins_over_accelerates_own_choice(monkeypatch):
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    # As on a GPU machine: accelerate's own choice is another device (here "meta", which cannot train).
    monkeypatch.setattr(PartialState, "default_device", property(lambda self: torch.device("meta")))
    monkeypatch.setenv("COMPANION_DEVICE", "cpu")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        PartialState()  # a notebook's state on that device, made before train()
        model = tiny_gpt2()
        result = quick(model=model, train_data=counting_data(16), steps=2)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert next(model.parameters()).device == torch.device("cpu") and all(map(math.isfinite, result.losses))


@pytest.mark.parametrize("device", ["cuda", "mps", "tpu"])
def test_companion_device_that_is_unknown_or_missing_is_a_clear_error(monkeypatch, device):
    from companion.device import pick_device

    try:
        pick_device(device)
        pytest.skip(f"{device} is available here")
    except (ValueError, RuntimeError) as err:
        expected = type(err)
    monkeypatch.setenv("COMPANION_DEVICE", device)
    model = Counting(tiny_gpt2())
    with pytest.raises(expected, match=rf"COMPANION_DEVICE={device}: .*device '{device}'"):
        quick(model=model, train_data=counting_data(16), steps=2)
    assert model.calls == 0
