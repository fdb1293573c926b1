"""LoRA from scratch against peft: same outputs, same trainable count, merge, freezing, errors."""

import companion  # noqa: F401  (first: offline Hugging Face cache)
import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaForCausalLM

from companion import lora
from companion.lora import LoRALinear, add_lora, count_trainable, lora_state_dict, merge_lora

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # peft 0.21 calls a transformers 5 method that is deprecated; nothing for us to change.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

TARGETS = ["query", "value"]


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    return BertModel(config).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row, so the mask path is exercised too
    return {"input_ids": ids, "attention_mask": mask}


def randomize_lora_b(model: nn.Module, seed: int = 2) -> None:
    """B is zero at init, which would hide any mistake in the update: give it random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_lora_linear_shapes_init_and_scaling():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.lora_A.weight.shape == (4, 16) and layer.lora_B.weight.shape == (12, 4)
    assert layer.scaling == 2.0 and torch.all(layer.lora_B.weight == 0)
    bound = 1 / 16**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in=16: U(-1/sqrt(16), 1/sqrt(16))
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 3
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(3, 16)
    expected = base(x) + x @ layer.lora_A.weight.T @ layer.lora_B.weight.T * 2.0
    torch.testing.assert_close(layer(x), expected)


def test_same_outputs_and_trainable_count_as_peft():
    base = tiny_bert()
    ours = add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8, dropout=0.1)
    theirs = get_peft_model(copy.deepcopy(base),
                            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=TARGETS)).eval()
    randomize_lora_b(theirs)
    # Our adapter file has peft's keys, less peft's "base_model.model." wrapper prefix.
    peft_sd = {k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(theirs).items()}
    assert sorted(peft_sd) == sorted(lora_state_dict(ours))
    ours.load_state_dict(peft_sd, strict=False)
    ours.eval()  # dropout off: the only randomness
    with torch.no_grad():
        out_ours, out_theirs = ours(**batch()).last_hidden_state, theirs(**batch()).last_hidden_state
        out_base = base(**batch()).last_hidden_state
    torch.testing.assert_close(out_ours, out_theirs)
    assert not torch.allclose(out_ours, out_base, atol=1e-3)  # the update really matters
    assert count_trainable(ours) == theirs.get_nb_trainable_parameters()
    # 2 layers x (query + value) x (A: 4x32 + B: 32x4)
    assert count_trainable(ours)[0] == 2 * 2 * (4 * 32 + 32 * 4)


def test_wrapped_model_equals_base_at_init():
    base = tiny_bert()
    ours = add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8)
    with torch.no_grad():
        assert torch.equal(ours(**batch()).last_hidden_state, base(**batch()).last_hidden_state)


def test_merge_and_unmerge():
    model = add_lora(tiny_bert(), TARGETS, r=4, alpha=8)
    randomize_lora_b(model)
    layer = model.encoder.layer[0].attention.self.query
    original = layer.base_layer.weight.clone()
    with torch.no_grad():
        before = model(**batch()).last_hidden_state
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.merge()
                m.merge()  # a second merge must not add the update twice
        assert layer.merged and not torch.equal(layer.base_layer.weight, original)
        torch.testing.assert_close(model(**batch()).last_hidden_state, before)  # no double count
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.unmerge()
        assert not layer.merged
        torch.testing.assert_close(layer.base_layer.weight, original, atol=1e-6, rtol=0)
        torch.testing.assert_close(model(**batch()).last_hidden_state, before)


def test_merge_lora_gives_plain_linears_like_peft_merge_and_unload():
    base = tiny_bert()
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    randomize_lora_b(theirs)
    ours = add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8)
    ours.load_state_dict({k.removeprefix("base_model.model."): v
                          for k, v in get_peft_model_state_dict(theirs).items()}, strict=False)
    with torch.no_grad():
        before = ours(**batch()).last_hidden_state
        merged = merge_lora(ours)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        assert type(merged.encoder.layer[0].attention.self.query) is nn.Linear
        torch.testing.assert_close(merged(**batch()).last_hidden_state, before)
        # the merged weights are peft's merged weights, and the state dict is the base model's again
        peft_merged = theirs.merge_and_unload().state_dict()
        assert merged.state_dict().keys() == base.state_dict().keys()
        for key, value in merged.state_dict().items():
            torch.testing.assert_close(value, peft_merged[key])


def test_only_lora_tensors_train():
    model = add_lora(tiny_llama(), ["q_proj", "v_proj"], r=4, alpha=8)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"model.layers.{i}.self_attn.{proj}.lora_{ab}.weight"
                         for i in range(2) for proj in ("q_proj", "v_proj") for ab in "AB"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = batch()["input_ids"]
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(lora_state_dict(model))  # every LoRA tensor moved, nothing else
    assert losses[-1] < losses[0]


def test_bad_target_modules_say_what_to_use():
    with pytest.raises(ValueError, match=r"no module of the model matches.*'query'") as info:
        add_lora(tiny_bert(), ["q_proj"])
    assert "encoder.layer.0.attention.self.query" in str(info.value)  # lists real Linear names
    torch.manual_seed(0)
    gpt2 = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100))
    with pytest.raises(ValueError, match="not nn.Linear.*Conv1D"):  # GPT-2's fused projections
        add_lora(gpt2, ["c_attn"])
    with pytest.raises(TypeError, match="list"):
        add_lora(tiny_bert(), "query")


def merge_all(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()


def outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch()).last_hidden_state


def test_state_dict_of_a_merged_model_is_refused_not_counted_twice():
    model = add_lora(tiny_bert(), TARGETS, r=4, alpha=8)
    randomize_lora_b(model)
    expected = outputs(model)
    merge_all(model)
    # base_layer.weight now holds W + BA: loaded into an unmerged model, BA would be added twice
    with pytest.raises(ValueError, match=r"layer\.0\.attention\.self\.query is merged.*twice.*unmerge\(\)"):
        model.state_dict()
    # the adapter alone does not depend on merging: it gives the same model in an unmerged copy
    fresh = add_lora(tiny_bert(), TARGETS, r=4, alpha=8)
    fresh.load_state_dict(lora_state_dict(model), strict=False)
    torch.testing.assert_close(outputs(fresh), expected)
    # unmerged again, the whole state dict round-trips
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()
    fresh = add_lora(tiny_bert(seed=5), TARGETS, r=4, alpha=8)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(outputs(fresh), expected)


def test_loading_into_a_merged_model_is_refused():
    trained = add_lora(tiny_bert(), TARGETS, r=4, alpha=8)
    randomize_lora_b(trained)
    model = add_lora(tiny_bert(), TARGETS, r=4, alpha=8)
    randomize_lora_b(model, seed=3)
    merge_all(model)  # its base weights hold its own update: new A and B would not replace it
    with pytest.raises(ValueError, match=r"attention\.self\.query is merged.*unmerge\(\)"):
        model.load_state_dict(lora_state_dict(trained), strict=False)


def test_a_merge_lora_state_dict_is_not_silently_skipped():
    model = add_lora(tiny_bert(), TARGETS, r=4, alpha=8)
    randomize_lora_b(model)
    merged = merge_lora(copy.deepcopy(model)).state_dict()  # plain "...query.weight" = W + BA
    # strict=False used to skip the adapted layers without a word (their keys differ)
    with pytest.raises(ValueError, match=r"query\.weight.*merge_lora.*base model"):
        add_lora(tiny_bert(), TARGETS, r=4, alpha=8).load_state_dict(merged, strict=False)
    base = tiny_bert()
    base.load_state_dict(merged)  # where it belongs: the base model, without add_lora
    torch.testing.assert_close(outputs(base), outputs(model), atol=1e-5, rtol=1e-5)


def test_adapter_file_records_rank_alpha_and_targets(tmp_path):
    base = tiny_bert()
    model = add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8)
    randomize_lora_b(model)
    path = tmp_path / "adapter.safetensors"
    lora.save_lora(model, path)
    with safe_open(str(path), framework="pt") as f:
        config = {key: json.loads(value) for key, value in f.metadata().items()}
        keys = set(f.keys())
    names = [f"encoder.layer.{i}.attention.self.{t}" for i in range(2) for t in TARGETS]
    assert config == {"r": 4, "alpha": 8, "target_modules": names} == lora.lora_config(model)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    assert keys == {k.removeprefix("base_model.model.") for k in get_peft_model_state_dict(theirs)}
    fresh = lora.load_lora(add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8), path)
    torch.testing.assert_close(outputs(fresh), outputs(model))
    # merged or not, the adapter is the same A and B
    merge_all(model)
    lora.save_lora(model, tmp_path / "merged.safetensors")
    fresh = add_lora(copy.deepcopy(base), TARGETS, r=4, alpha=8)
    lora.load_lora(fresh, tmp_path / "merged.safetensors")
    torch.testing.assert_close(outputs(fresh), outputs(model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("targets", "r", "alpha", "message"), [
    (TARGETS, 2, 8, r"r=4 in the file, r=2 in the model"),
    (TARGETS, 4, 16, r"alpha=8 in the file, alpha=16 in the model"),
    (["query"], 4, 8, r"target_modules differ.*only in the file: \['encoder\.layer\.0\.attention\.self\.v"),
    (["query", "key", "value"], 4, 8, r"only in the model: \['encoder\.layer\.0\.attention\.self\.key'"),
])
def test_load_lora_refuses_a_different_configuration(tmp_path, targets, r, alpha, message):
    model = add_lora(tiny_bert(), TARGETS, r=4, alpha=8)
    randomize_lora_b(model)
    lora.save_lora(model, tmp_path / "adapter.safetensors")
    other = add_lora(tiny_bert(), targets, r=r, alpha=alpha)
    before = {k: v.clone() for k, v in lora_state_dict(other).items()}
    with pytest.raises(ValueError, match=message + r".*add_lora\(model, \[.*\], r=4, alpha=8\)"):
        lora.load_lora(other, tmp_path / "adapter.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in lora_state_dict(other).items())  # nothing half loaded


def test_load_lora_refuses_files_without_a_config_and_models_without_lora(tmp_path):
    model = add_lora(tiny_bert(), TARGETS, r=4, alpha=8)
    bare = {k: v.contiguous() for k, v in lora_state_dict(model).items()}  # an adapter without its config
    save_file(bare, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match=r"does not record r, alpha, target_modules.*save_lora"):
        lora.load_lora(model, tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match=r"no LoRALinear layer.*add_lora"):
        lora.save_lora(merge_lora(model), tmp_path / "none.safetensors")
