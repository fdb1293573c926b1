"""companion.prune: magnitude masks (exact sparsity, largest kept, right tensors), structured pruning."""

import copy

import pytest
import torch
from transformers import BertConfig, BertModel

from companion import prune
from companion.finetune import MeanPoolClassifier, collate

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0, layers=2, heads=4):
    """A MeanPoolClassifier on a random BERT of width 32 (no download), eval mode."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=64, max_position_embeddings=32, pad_token_id=0)
    return MeanPoolClassifier(BertModel(config, add_pooling_layer=False), dropout=0.0).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [{"input_ids": torch.randint(1, 30, (n,), generator=g), "attention_mask": torch.ones(n, dtype=torch.long),
             "labels": torch.tensor(n % 2)} for n in (5, 9, 3, 12)]
    return collate(rows)


def logits(model, b):
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def test_encoder_weights_are_the_layers_linear_matrices():
    names = list(prune.encoder_weights(tiny()))
    assert len(names) == 2 * 6  # query, key, value, attention output, intermediate, output per layer
    assert all(n.startswith("encoder.encoder.layer.") and n.endswith(".weight") for n in names)
    assert not any("embeddings" in n or n.startswith("head") for n in names)


@pytest.mark.parametrize("scope", prune.SCOPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.999])
def test_sparsity_is_met_exactly(scope, sparsity):
    weights = prune.encoder_weights(tiny())
    masks = prune.magnitude_masks(weights, sparsity, scope=scope)
    assert masks.keys() == weights.keys()
    if scope == "global":
        n = sum(w.numel() for w in weights.values())
        assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * n)
    else:
        for name, w in weights.items():
            assert int((~masks[name]).sum()) == round(sparsity * w.numel())


@pytest.mark.parametrize("scope", prune.SCOPES)
def test_the_largest_weights_are_kept(scope):
    weights = prune.encoder_weights(tiny())
    masks = prune.magnitude_masks(weights, 0.6, scope=scope)
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    for group in groups:
        kept = torch.cat([weights[n].detach().abs()[masks[n]] for n in group])
        dropped = torch.cat([weights[n].detach().abs()[~masks[n]] for n in group])
        assert kept.min() >= dropped.max()


def test_global_and_layer_scopes_differ_when_layers_differ_in_scale():
    weights = {"a": torch.arange(1.0, 9.0).view(2, 4), "b": 100 * torch.arange(1.0, 9.0).view(2, 4)}
    assert not prune.magnitude_masks(weights, 0.5)["a"].any()  # global: all of a's small weights go
    assert int(prune.magnitude_masks(weights, 0.5, scope="layer")["a"].sum()) == 4


def test_ties_are_broken_to_the_exact_count():
    masks = prune.magnitude_masks({"w": torch.ones(3, 5)}, 0.4)
    assert int((~masks["w"]).sum()) == 6


def test_masks_apply_to_the_right_tensors_and_nothing_else():
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    masks = prune.magnitude_masks(prune.encoder_weights(model), 0.5)
    prune.apply_masks(model, masks)
    after = model.state_dict()
    for name, value in after.items():
        if name in masks:
            assert torch.equal(value, before[name] * masks[name])
            assert int((value == 0).sum()) >= int((~masks[name]).sum())
        else:
            assert torch.equal(value, before[name]), name
    assert prune.zero_fraction(model) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_0_1_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"sparsity .* in \[0, 1\)"):
        prune.magnitude_masks(prune.encoder_weights(tiny()), bad)


def test_other_bad_input():
    with pytest.raises(ValueError, match="scope must be one of"):
        prune.magnitude_masks(prune.encoder_weights(tiny()), 0.5, scope="row")
    with pytest.raises(ValueError, match="no weights"):
        prune.magnitude_masks({}, 0.5)
    with pytest.raises(KeyError, match="not a parameter"):
        prune.apply_masks(tiny(), {"nope.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="not a BERT-style encoder"):
        prune.head_importance(torch.nn.Linear(2, 2))


def test_zero_sparsity_changes_nothing():
    model = tiny()
    b = batch()
    expected = logits(model, b)
    prune.apply_masks(model, prune.magnitude_masks(prune.encoder_weights(model), 0.0))
    assert torch.equal(logits(model, b), expected)


# --- structured ----------------------------------------------------------------------------------

def zero_heads(model, heads):
    """The same removal done by zeroing: a head's value rows and output columns set to 0."""
    for index, drop in heads.items():
        layer = prune._layers(model)[index]
        size = layer.attention.self.attention_head_size
        with torch.no_grad():
            for h in drop:
                layer.attention.self.value.weight[h * size:(h + 1) * size] = 0
                layer.attention.self.value.bias[h * size:(h + 1) * size] = 0
    return model


def test_removing_heads_equals_zeroing_them_and_shrinks_the_matrices():
    model, b = tiny(), batch()
    heads = {0: [1, 3], 1: [0]}
    expected = logits(zero_heads(copy.deepcopy(model), heads), b)
    prune.prune_heads(model, heads)
    torch.testing.assert_close(logits(model, b), expected, atol=1e-5, rtol=1e-5)
    attention = model.encoder.encoder.layer[0].attention
    assert attention.self.query.weight.shape == (16, 32) and attention.output.dense.weight.shape == (32, 16)
    assert attention.self.num_attention_heads == 2


def test_removing_ffn_neurons_equals_zeroing_them():
    model, b = tiny(), batch()
    drop = [prune.lowest(s, 0.25) for s in prune.ffn_importance(model)]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer, d in zip(prune._layers(zeroed), drop):
            layer.output.dense.weight[:, d] = 0
    prune.prune_ffn(model, drop)
    torch.testing.assert_close(logits(model, b), logits(zeroed, b), atol=1e-5, rtol=1e-5)
    assert model.encoder.encoder.layer[0].intermediate.dense.out_features == 48


def test_prune_structured_removes_the_weakest_and_counts_parameters():
    model = tiny(layers=2, heads=4)
    scores = prune.head_importance(model)
    assert scores.shape == (2, 4)
    weakest = divmod(int(scores.argmin()), 4)
    before = prune.parameter_count(model)
    prune.prune_structured(model, heads=0.25, ffn=0.5)
    kept = [layer.attention.self.num_attention_heads for layer in prune._layers(model)]
    assert sum(kept) == 6 and kept[weakest[0]] <= 3
    assert prune.parameter_count(model) < before
    assert prune.pruned_bytes(model) == 4 * prune.parameter_count(model)


def test_every_layer_keeps_a_head():
    model = tiny(layers=2, heads=2)
    prune.prune_structured(model, heads=0.75)
    assert [layer.attention.self.num_attention_heads for layer in prune._layers(model)] == [1, 1]
    with pytest.raises(ValueError, match="keep at least one"):
        prune.prune_heads(tiny(), {0: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="heads 0..3"):
        prune.prune_heads(tiny(), {0: [4]})


def test_recovery_keeps_pruned_weights_at_zero():
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(1, 30, (6,), generator=g), "attention_mask": torch.ones(6, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(40)]
    model = tiny()
    masks = prune.magnitude_masks(prune.encoder_weights(model), 0.7)
    prune.apply_masks(model, masks)
    before = copy.deepcopy(model.state_dict())
    history = prune.recover(model, data, data[:8], epochs=1, lr=1e-3, masks=masks)
    assert len(history) == 1
    state = model.state_dict()
    for name, mask in masks.items():
        assert torch.all(state[name][~mask] == 0)
        assert not torch.equal(state[name], before[name])  # the kept weights did train


def test_pruned_variant_copies_and_reports_masks():
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    sparse, masks = prune.pruned_variant(model, {"sparsity": 0.5})
    assert masks is not None and prune.zero_fraction(sparse) == pytest.approx(0.5, abs=1e-3)
    small, none = prune.pruned_variant(model, {"heads": 0.25, "ffn": 0.5})
    assert none is None and prune.parameter_count(small) < prune.parameter_count(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_recipe_refuses_to_write_into_the_shipped_results():
    from companion.recipes import RESULTS

    with pytest.raises(ValueError, match="shipped results"):
        prune.run_recipe(RESULTS / "prune-recover")


def test_polarity_data_encodes_each_split_as_polarity_lora_was_trained():
    from companion.recipes import shipped_results

    data = prune.polarity_data(subset=3)
    assert sorted(data) == ["test", "train", "validation"]
    max_length = shipped_results("polarity-lora")["config"]["max_length"]
    for split in data.values():
        assert len(split) == 3
        assert all(len(row["input_ids"]) <= max_length for row in split)
