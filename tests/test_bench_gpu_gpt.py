"""Tests of bench/gpu_gpt.py: its pure helpers, its model against companion.gpt.GPT, a CPU smoke run."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from companion.gpt import GPT, GPTConfig

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_gpt.py"
spec = importlib.util.spec_from_file_location("bench_gpu_gpt", SCRIPT)
bench = sys.modules["bench_gpu_gpt"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(bench)

TINY = ["--device", "cpu", "--no-compile", "--threads", "1", "--layers", "1", "--width", "32",
        "--heads", "2", "--seq", "16", "--batch", "2", "--vocab", "100", "--steps", "2",
        "--warmup-steps", "1", "--peak-size", "128"]


def test_pad_vocab_rounds_up_to_the_multiple():
    assert bench.pad_vocab(50257) == 50304 == 393 * 128  # nanoGPT's size, also a multiple of 128
    assert bench.pad_vocab(50304) == 50304
    assert bench.pad_vocab(1) == 64
    assert bench.pad_vocab(65, 8) == 72
    assert bench.Config().vocab == 50304


@pytest.mark.parametrize("vocab, multiple", [(0, 64), (100, 0), (-5, 64)])
def test_pad_vocab_rejects_sizes_below_one(vocab, multiple):
    with pytest.raises(ValueError, match=">= 1"):
        bench.pad_vocab(vocab, multiple)


def test_config_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="not divisible by 5 heads"):
        bench.Config(vocab=64, n_ctx=8, n_layer=1, n_head=5, d_model=32)
    with pytest.raises(ValueError, match=">= 1"):
        bench.Config(vocab=64, n_ctx=0)


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--batch", "-1"), ("--warmup-steps", "-1")])
def test_parse_args_rejects_bad_sizes(flag, value):
    with pytest.raises(ValueError, match=flag):
        bench.parse_args([flag, value])


def test_parameter_counts_match_a_hand_count(one_thread):
    d, layers, vocab, ctx = 32, 2, 64, 16
    model = bench.BenchGPT(bench.Config(vocab=vocab, n_ctx=ctx, n_layer=layers, n_head=2, d_model=d))
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert per_layer == 12 * d * d + 13 * d
    assert model.non_embedding_parameters() == layers * per_layer + 2 * d  # + the final LayerNorm
    assert sum(p.numel() for p in model.parameters()) == model.non_embedding_parameters() + (vocab + ctx) * d


def test_model_computes_the_loss_of_companion_gpt_with_the_same_weights(one_thread):
    """is_causal flash attention gives the same loss as the book's GPT with its explicit causal mask."""
    torch.manual_seed(0)
    c = bench.Config(vocab=64, n_ctx=12, n_layer=2, n_head=4, d_model=32)
    ours = bench.BenchGPT(c).eval()
    ref = GPT(GPTConfig(vocab_size=64, block_size=13, n_layer=2, n_head=4, n_embd=32)).eval()
    with torch.no_grad():
        for p in ours.parameters():  # non-zero biases and LayerNorms, so a misplaced one shows
            p.add_(torch.randn_like(p) * 0.1)
        t = ref.transformer
        t.wte.weight.copy_(ours.wte.weight)
        t.wpe.weight[:12].copy_(ours.wpe.weight)  # position 12 only feeds the unscored last logit
        t.ln_f.load_state_dict(ours.ln_f.state_dict())
        for mine, theirs in zip(ours.blocks, t.h):
            theirs.ln_1.load_state_dict(mine.ln_1.state_dict())
            theirs.ln_2.load_state_dict(mine.ln_2.state_dict())
            for i, proj in enumerate((theirs.attn.q_proj, theirs.attn.k_proj, theirs.attn.v_proj)):
                proj.weight.copy_(mine.qkv.weight[i * 32:(i + 1) * 32])
                proj.bias.copy_(mine.qkv.bias[i * 32:(i + 1) * 32])
            theirs.attn.out_proj.load_state_dict(mine.attn_proj.state_dict())
            theirs.mlp.c_fc.load_state_dict(mine.fc.state_dict())
            theirs.mlp.c_proj.load_state_dict(mine.mlp_proj.state_dict())
        tokens = torch.randint(0, 64, (3, 13))
        expected = ref(tokens, labels=tokens).loss
        got = ours(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_main_runs_on_the_cpu_and_reports_finite_positive_figures(one_thread, capsys):
    result = bench.main(TINY)
    out = capsys.readouterr().out
    figures = [result.step_seconds, result.tokens_per_second, result.peak_flops, result.mfu,
               result.mean_loss]
    assert all(math.isfinite(x) and x > 0 for x in figures), result
    assert result.tokens_per_step == 2 * 16
    assert result.tokens_per_second == pytest.approx(32 / result.step_seconds)
    assert result.device == "cpu" and result.dtype == "fp32" and result.peak_memory_bytes is None
    assert abs(result.mean_loss - math.log(100)) < 1.0  # random tokens: near ln V after 3 steps
    for text in ("tokens/s", "measured peak", "MFU", f"{result.parameters:,} parameters"):
        assert text in out


def test_main_with_bf16_autocast_and_grad_accumulation_on_the_cpu(one_thread):
    result = bench.main(TINY + ["--dtype", "bf16", "--grad-accum", "2"])
    assert result.dtype == "bf16" and result.tokens_per_step == 2 * 16 * 2
    assert math.isfinite(result.mean_loss) and result.tokens_per_second > 0
