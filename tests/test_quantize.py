"""companion.quantize: error bounds, exact grid points, granularities, GGUF Q8_0 bytes and a file round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from companion import quantize as Q


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("granularity", Q.GRANULARITIES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_every_error_is_at_most_half_a_step(bits, granularity, symmetric):
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(bits)) * 0.05
    w[3, 7] = 1.5  # an outlier
    qw = Q.quantize(w, bits, granularity=granularity, group_size=16, symmetric=symmetric)
    error = (Q.dequantize(qw) - w).abs().reshape(qw.q.shape)
    assert torch.all(error <= qw.scale / 2 * (1 + 1e-5) + 1e-8)
    low, high = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert int(qw.q.min()) >= low and int(qw.q.max()) <= high


def test_points_on_the_grid_come_back_exactly():
    w = torch.tensor([[-127.0, -3.0, 0.0, 5.0, 127.0]]) * 0.01
    assert torch.equal(Q.dequantize(Q.quantize(w, 8)), (w / 0.01).round() * 0.01)
    zero = Q.quantize(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), 2, symmetric=False)
    assert Q.dequantize(zero).tolist() == [[0.0, 1.0, 2.0, 3.0]] and zero.zero.item() == 0
    assert Q.dequantize(Q.quantize(torch.zeros(2, 32), 4)).abs().max() == 0  # scale 0: no division


def test_rounding_is_half_away_from_zero():
    assert Q.round_half_away(torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 0.49])).tolist() == [1, 2, 3, -1, -3, 0]


def test_smaller_groups_confine_an_outlier():
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0)) * 0.02
    w[:, 5] = 0.8  # one outlier input feature
    mse = {g: float((Q.dequantize(Q.quantize(w, 4, granularity=g, group_size=32)) - w).pow(2).mean())
           for g in Q.GRANULARITIES}
    assert mse["group"] < mse["channel"] <= mse["tensor"]
    size = Q.quantize(w, 4, granularity="group", group_size=32).nbytes()
    assert size == 32 * 128 // 2 + (32 * 128 // 32) * 4  # 4 bits a weight, a float32 scale a group


def test_absmax_8_bit_in_groups_of_32_is_ggufs_q8_0():
    from gguf import GGMLQuantizationType, quants

    w = torch.randn(8, 96, generator=torch.Generator().manual_seed(1)).mul(0.1)
    packed = quants.quantize(w.numpy(), GGMLQuantizationType.Q8_0)
    ours = Q.quantize(w, 8, granularity="group", group_size=32, scale_dtype=torch.float16)
    rows = packed.reshape(-1, 34)  # per block: a float16 scale (2 bytes), 32 int8 values
    assert np.array_equal(rows[:, :2].copy().view(np.float16).ravel(), ours.scale.numpy().ravel())
    assert np.array_equal(rows[:, 2:].view(np.int8), ours.q.numpy())
    back = quants.dequantize(packed, GGMLQuantizationType.Q8_0)
    assert np.array_equal(back, Q.dequantize(ours).numpy())


def test_a_gguf_file_round_trip(tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, quants

    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(path, "llama")
    for name, qtype in [("q8", GGMLQuantizationType.Q8_0), ("q4", GGMLQuantizationType.Q4_0)]:
        writer.add_tensor(name, quants.quantize(w.numpy(), qtype), raw_dtype=qtype)  # shape in bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    q8 = quants.dequantize(tensors["q8"].data, GGMLQuantizationType.Q8_0).reshape(w.shape)
    q4 = quants.dequantize(tensors["q4"].data, GGMLQuantizationType.Q4_0).reshape(w.shape)
    ours = Q.dequantize(Q.quantize(w, 8, granularity="group", group_size=32, scale_dtype=torch.float16))
    assert np.array_equal(q8, ours.numpy())
    # Q4_0 keeps 16 levels a block of 32: its error is within one step of max|w| / 8
    step = w.reshape(-1, 32).abs().amax(1, keepdim=True) / 8
    assert torch.all((torch.from_numpy(q4).reshape(-1, 32) - w.reshape(-1, 32)).abs() <= step * 1.01)


def test_fake_quantization_of_a_model_and_bad_input():
    model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    before = model[0].weight.clone()
    assert Q.fake_quantize_(model, 4, granularity="group", group_size=16) == 2
    assert not torch.equal(before, model[0].weight)
    assert all(len(group.unique()) <= 15 for group in model[0].weight.reshape(-1, 16))  # 15 levels at 4 bits
    with pytest.raises(ValueError, match="bits"):
        Q.quantize(before, 1)
    with pytest.raises(ValueError, match="multiple of group_size"):
        Q.quantize(torch.zeros(2, 30), 8, granularity="group", group_size=32)
    with pytest.raises(ValueError, match="granularity"):
        Q.quantize(before, 8, granularity="row")
    with pytest.raises(ValueError, match="empty"):
        Q.quantize(torch.zeros(0), 8)


def _unpack_q4_0(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GGUF Q4_0 blocks (18 bytes: a float16 scale, 16 bytes of two 4-bit values) -> scales, -8..7 ints."""
    rows = packed.reshape(-1, 18)
    scale = rows[:, :2].copy().view(np.float16)
    nibbles = rows[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8  # low nibbles first
    return scale, q


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q4_0_gives_ggufs_bytes(seed):
    from gguf import GGMLQuantizationType, quants

    w = torch.randn(6, 128, generator=torch.Generator().manual_seed(seed)) * 0.05
    w[0, :32] = torch.linspace(-1, 1, 32)  # halves: x.5 steps, where rounding conventions differ
    w[1, 32:64] = 0.0  # an all-zero block
    packed = quants.quantize(w.numpy(), GGMLQuantizationType.Q4_0)
    scale, q = _unpack_q4_0(packed)
    ours = Q.quantize_q4_0(w)
    assert np.array_equal(scale, ours.scale.numpy()) and np.array_equal(q, ours.q.numpy())
    back = quants.dequantize(packed, GGMLQuantizationType.Q4_0)
    assert np.array_equal(back, Q.dequantize(ours).numpy())
    # the weight of largest magnitude of each block is exact up to float16: it sits on level -8
    nonzero = ours.scale.ravel() != 0
    assert torch.all(ours.q[nonzero].min(dim=1).values == -8)


def test_q4_0_and_q8_0_gguf_file_round_trip_equals_ours(tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, quants

    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(4)) * 0.02
    path = tmp_path / "two.gguf"
    writer = GGUFWriter(path, "llama")
    for qtype in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0):
        writer.add_tensor(qtype.name, quants.quantize(w.numpy(), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensors = {t.name: t for t in GGUFReader(path).tensors}
    assert tensors["Q4_0"].shape.tolist() == [96, 16]  # GGUF lists the dimensions innermost first
    q8 = quants.dequantize(tensors["Q8_0"].data, GGMLQuantizationType.Q8_0)
    q4 = quants.dequantize(tensors["Q4_0"].data, GGMLQuantizationType.Q4_0)
    ours8 = Q.quantize(w, 8, granularity="group", group_size=32, scale_dtype=torch.float16)
    assert np.array_equal(q8.reshape(w.shape), Q.dequantize(ours8).numpy())
    assert np.array_equal(q4.reshape(w.shape), Q.dequantize(Q.quantize_q4_0(w)).numpy())
    assert tensors["Q4_0"].n_bytes == Q.quantize_q4_0(w).nbytes() == 16 * 96 // 32 * 18
    assert tensors["Q8_0"].n_bytes == ours8.nbytes() == 16 * 96 // 32 * 34


def _layer_problem(seed: int = 0, rows: int = 48, cols: int = 128, tokens: int = 512):
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=gen) / cols**0.5  # correlated inputs, as in a network
    x = torch.randn(tokens, cols, generator=gen) @ mixing
    x[:, 3] *= 10  # one loud input feature
    return torch.randn(rows, cols, generator=gen) * 0.1, x


@pytest.mark.parametrize("granularity,bits", [("channel", 4), ("group", 4), ("channel", 3), ("group", 2)])
def test_gptq_beats_round_to_nearest_on_the_layer_output(granularity, bits):
    w, x = _layer_problem()
    options = dict(granularity=granularity, group_size=32)
    gptq = Q.dequantize(Q.gptq_quantize(w, x.T @ x, bits, block_size=64, **options))
    rtn = Q.dequantize(Q.quantize(w, bits, **options))
    error = {name: float((x @ w.T - x @ v.T).norm()) for name, v in [("gptq", gptq), ("rtn", rtn)]}
    assert error["gptq"] < 0.9 * error["rtn"], error
    # GPTQ stays on a grid: at most 2^bits - 1 levels a group
    groups = gptq.reshape(-1, 32) if granularity == "group" else gptq
    assert max(len(g.unique()) for g in groups) <= 2**bits - 1


@pytest.mark.parametrize("granularity", ["channel", "group"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_with_an_identity_hessian_is_round_to_nearest(granularity, symmetric):
    w, _ = _layer_problem(1)
    options = dict(granularity=granularity, group_size=32, symmetric=symmetric)
    gptq = Q.gptq_quantize(w, torch.eye(w.shape[1]), 4, block_size=64, **options)
    rtn = Q.quantize(w, 4, **options)
    assert torch.equal(gptq.q, rtn.q.to(gptq.q.dtype)) and torch.equal(gptq.scale, rtn.scale)
    assert torch.equal(Q.dequantize(gptq), Q.dequantize(rtn))


def test_gptq_on_a_model_block_by_block_and_bad_input():
    torch.manual_seed(0)
    embed = torch.nn.Embedding(50, 32)
    blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                                                      torch.nn.Linear(64, 32)) for _ in range(2)])
    model = torch.nn.Sequential(embed, *blocks)
    batches = [torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    hessians = Q.input_hessians(model, batches, {"1.0": blocks[0][0]}, stop_after=blocks[0])
    x = embed(torch.cat(batches).reshape(-1)).detach()
    assert torch.allclose(hessians["1.0"], x.T @ x, atol=1e-4)
    for sequential in (True, False):
        result = Q.gptq_model_(model, batches, list(blocks), 4, sequential=sequential, granularity="group",
                               group_size=32, block_size=32)
        assert sorted(result) == ["1.0", "1.2", "2.0", "2.2"]
        assert torch.equal(blocks[1][2].weight, Q.dequantize(result["2.2"]))
    w, x = _layer_problem()
    with pytest.raises(ValueError, match="hessian must be"):
        Q.gptq_quantize(w, torch.eye(5))
    with pytest.raises(ValueError, match="per channel or per group"):
        Q.gptq_quantize(w, torch.eye(128), granularity="tensor")
    with pytest.raises(ValueError, match="group_size"):
        Q.gptq_quantize(w, torch.eye(128), granularity="group", group_size=48)


def test_torchao_int8_weights_are_ours_with_its_scale_and_within_one_of_our_steps():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    layer = torch.nn.Linear(96, 40, bias=False)
    torch.nn.init.normal_(layer.weight, generator=torch.Generator().manual_seed(0))
    w = layer.weight.detach().clone()
    quantize_(layer, Int8WeightOnlyConfig())
    theirs = layer.weight
    scale = w.abs().amax(dim=1, keepdim=True) / 127.5  # 256 levels, -128..127
    assert torch.equal(theirs.scale.view(-1, 1), scale)
    assert torch.equal(theirs.qdata, torch.clamp(torch.round(w * (1 / scale)), -128, 127).to(torch.int8))
    ours = Q.quantize(w, 8, granularity="channel")
    gap = (theirs.dequantize() - Q.dequantize(ours)).abs()
    assert torch.all(gap <= ours.scale * (1 + 1e-5))
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ theirs.dequantize().T, rtol=1e-5, atol=1e-5)


def test_torchao_int4_groups_use_sixteen_levels_and_half_a_step():
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    layer = torch.nn.Linear(64, 8, bias=False)
    w = layer.weight.detach().clone()
    quantize_(layer, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
    theirs = layer.weight
    scale = w.reshape(-1, 32).abs().amax(dim=1, keepdim=True) / 7.5  # levels -8..7
    torch.testing.assert_close(theirs.scale.reshape(-1, 1), scale)
    assert int(theirs.qdata.min()) >= -8 and int(theirs.qdata.max()) <= 7
    error = (theirs.dequantize() - w).abs().reshape(-1, 32)
    assert torch.all(error <= scale / 2 * (1 + 1e-5))
