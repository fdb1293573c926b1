"""The PEFT comparison (companion.peft_compare): every method's trainable set, a few steps of each, the
hand-written adapter and int8 base, peft's multi-adapter API, results.json and its resumption."""

import doctest
import json
from pathlib import Path

import pytest
import torch

from companion import finetune, peft_compare
from companion.peft_compare import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

# hand-counted for MiniLM-L6 (hidden 384, FFN 1,536, 6 layers) + the 384 x 2 head (770)
HEAD = 384 * 2 + 2
LORA_PER_RANK = 6 * (4 * (384 + 384) + 2 * (384 + 1536))  # A and B of q, k, v, attention out, FFN in, out
BIASES = 384 + 6 * (4 * 384 + 384 + 1536 + 384 + 384)  # embeddings' LayerNorm; q k v o, LN, FFN in, out, LN
EXPECTED = {
    "probe": HEAD,
    "bitfit": BIASES + HEAD,
    **{f"lora-r{r}": r * LORA_PER_RANK + HEAD for r in (1, 4, 8, 16)},
    "dora-r8": 8 * LORA_PER_RANK + 6 * (5 * 384 + 1536) + HEAD,  # + a magnitude per output feature
    "rslora-r8": 8 * LORA_PER_RANK + HEAD,
    "ia3": 6 * (384 + 384 + 1536) + HEAD,  # keys, values, the FFN's inner activations
    "adapter": 12 * (384 * 32 + 32 + 32 * 384 + 384) + (1 + 2 * 6) * 2 * 384 + HEAD,  # + every LayerNorm
    "prompt-tuning": 10 * 384 + HEAD,
    "int8-lora-r8": 8 * LORA_PER_RANK + HEAD,
}


def test_the_docstring_example_runs():
    assert doctest.testmod(peft_compare).failed == 0


@pytest.fixture(scope="module")
def data():
    return peft_compare.polarity_data(subset=16)


@pytest.fixture(scope="module")
def batch(data):
    return finetune.collate(data["test"][:8])


def test_trainable_parameters_are_what_each_method_trains():
    assert EXPECTED["lora-r8"] == 332_546  # polarity-lora's, shipped in companion/results
    shipped = Path(peft_compare.__file__).parent / "results" / "polarity-lora" / "results.json"
    if shipped.exists():
        assert json.loads(shipped.read_text())["trainable_parameters"] == EXPECTED["lora-r8"]
    for method, expected in EXPECTED.items():
        model, _ = peft_compare.build(method, seed=0)
        assert peft_compare.count(model)[0] == expected, method
    model, _ = peft_compare.build("full", seed=0)
    assert peft_compare.count(model)[0] == peft_compare.count(model)[1] == 22_566_146


def test_lora_r8_is_built_as_polarity_lora(batch):
    ours, _ = peft_compare.build("lora-r8", seed=3)
    theirs, _ = finetune.build_classifier(finetune.FinetuneConfig(method="lora"), seed=3)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())


def test_unknown_method_lists_the_valid_names(data):
    with pytest.raises(ValueError, match="use one of probe, bitfit, lora-r1.*prompt-tuning.*full"):
        peft_compare.build("lora-r3", seed=0)
    with pytest.raises(ValueError, match="unknown method 'qlora'"):
        peft_compare.run_method("qlora", 0, data, max_steps=1)
    with pytest.raises(ValueError, match="unknown method"):
        peft_compare.run_compare("/tmp/never-written-peft", methods=["bitfit", "nope"], max_steps=1)


@torch.no_grad()
def pooled(model, batch):
    return model.eval().pool(batch["input_ids"], batch["attention_mask"])


def test_untrained_adapters_leave_the_base_function_unchanged(batch):
    base, _ = peft_compare.build("probe", seed=0)
    for method in ("adapter", "lora-r8", "dora-r8", "ia3"):  # zero up-projection / B, unit scales
        model, _ = peft_compare.build(method, seed=0)
        assert torch.allclose(pooled(model, batch), pooled(base, batch), atol=1e-5), method
    adapter, _ = peft_compare.build("adapter", seed=0)
    first = adapter.encoder.encoder.layer[0].output.dense.adapter
    assert not first.up.weight.any() and first.down.weight.any() and first.down.weight.requires_grad


def test_prompt_tuning_pools_over_the_real_tokens_only(batch):
    model, _ = peft_compare.build("prompt-tuning", seed=0)
    model.eval()
    hidden = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert hidden.shape[1] == batch["input_ids"].shape[1] + 10  # peft puts 10 virtual tokens in front
    row = int(batch["attention_mask"].sum(1).argmin())  # the shortest sentence: padded the most
    n = int(batch["attention_mask"][row].sum())
    with torch.no_grad():
        expected = hidden[row, 10:10 + n].mean(0)
        assert torch.allclose(model.pool(batch["input_ids"], batch["attention_mask"])[row], expected, atol=1e-5)
        # padding does not change a sentence's vector
        alone = model.pool(batch["input_ids"][row:row + 1, :n], batch["attention_mask"][row:row + 1, :n])
    assert torch.allclose(alone[0], expected, atol=1e-4)


def test_the_int8_base_is_a_quarter_of_fp32_and_close_to_it(batch):
    fp32, _ = peft_compare.build("probe", seed=0)
    int8, _ = peft_compare.build("int8-lora-r8", seed=0)
    # 6 x (4 x 384^2 + 2 x 384 x 1,536) weights: 4 bytes each, or 1 byte + a 4-byte scale per row
    weights, rows = 6 * (4 * 384 * 384 + 2 * 384 * 1536), 6 * (5 * 384 + 1536)
    assert peft_compare.linear_weight_bytes(fp32) == 4 * weights
    assert peft_compare.linear_weight_bytes(int8) == weights + 4 * rows
    # LoRA B is zero: the int8 model is the rounded base. Per-row absmax rounding adds noise of std
    # scale / sqrt(12) = |w|max / 440 per weight, about 1% of each product's size when |w|max ~ 4 std;
    # through 12 rounded matrices in 6 layers it moved the pooled vectors (norms 2.4-6.1) by at most
    # 3.7% of their norm, cosine >= 0.9993 (measured on the first 64 test sentences): 6% and 0.998
    # leave room for other sentences, and a wrong scale or transposed weight fails both by far
    a, b = pooled(fp32, batch), pooled(int8, batch)
    assert ((a - b).norm(dim=1) / a.norm(dim=1)).max() < 0.06
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.998
    layer = int8.encoder.encoder.layer[0].attention.self.query.base_layer
    original = fp32.encoder.encoder.layer[0].attention.self.query.weight
    assert layer.weight_int8.dtype == torch.int8
    assert ((layer.dequantized() - original).abs() <= layer.scale[:, None] / 2 + 1e-7).all()
    with pytest.raises(AttributeError, match="cannot take a merged LoRA update"):
        int8.encoder.encoder.layer[0].attention.self.query.merge()


def test_the_int8_base_gets_no_gradient_and_lora_does(batch):
    model, _ = peft_compare.build("int8-lora-r8", seed=0)
    model.train()
    out = model(**batch)
    out.loss.backward()
    layer = model.encoder.encoder.layer[0].attention.self.query
    assert type(layer).__name__ == "LoRALinear"  # companion.lora's, around an int8 base
    grad_A = layer.lora_A.weight.grad
    assert grad_A is None or not grad_A.any()  # B = 0: A's gradient is zero at first
    assert layer.lora_B.weight.grad.any() and layer.base_layer.bias.grad is None and model.head.weight.grad.any()


@pytest.mark.parametrize("method", list(METHODS))
def test_two_steps_of_each_method(method, data):
    run = peft_compare.run_method(method, 0, data, max_steps=2)
    assert run["steps"] == 2 and run["trainable_parameters"] == (EXPECTED.get(method) or 22_566_146)
    assert 0 <= run["test_accuracy"] <= 1 and 0 <= run["validation_accuracy"] <= 1
    memory = run["memory"]
    assert memory["gradient_bytes"] == 4 * run["trainable_parameters"]  # fp32 gradients of what trains
    assert memory["optimizer_bytes"] >= 2 * memory["gradient_bytes"]  # AdamW's two moments (+ step counts)
    assert memory["activation_bytes"] > 0
    assert run["peak_bytes"] == memory["weight_bytes"] + memory["gradient_bytes"] + memory["optimizer_bytes"] \
        + memory["activation_bytes"]
    assert run["disk_bytes"] >= 4 * run["trainable_parameters"] and len(run["test_probabilities"]) == 16
    if method == "int8-lora-r8":  # int8 + fp32 scales: about a quarter of the fp32 linears
        assert run["linear_weight_bytes"] < 0.26 * 4 * 6 * (4 * 384 * 384 + 2 * 384 * 1536)


def test_adapter_workflow_saves_loads_switches_combines_and_merges(tmp_path):
    checks = peft_compare.adapter_workflow(tmp_path)
    assert checks["adapters"] == ["a", "b"]
    assert checks["reloaded_a_vs_saved_a"] < 1e-5 and checks["reloaded_b_vs_saved_b"] < 1e-5
    assert checks["a_vs_b"] > 1e-2 and checks["a_vs_base"] > 1e-2  # set_adapter switches the function
    assert checks["ab_delta_vs_weighted_sum"] < 1e-6 and checks["ab_vs_a"] > 1e-3
    assert checks["merged_vs_unmerged_ab"] < 1e-5


def check_results(results, methods, seeds):
    assert {"task", "model", "full_run", "seeds", "split_sizes", "methods", "table", "adapter_workflow",
            "memory_measured", "resumed", "wall_seconds", "device", "threads", "versions", "git_commit",
            "date"} <= results.keys()
    assert list(results["methods"]) == methods and results["seeds"] == seeds and results["full_run"] is False
    for method, r in results["methods"].items():
        assert r["trainable_parameters"] == EXPECTED[method] and r["lr_source"]
        for metric in peft_compare.METRICS:
            assert r["metrics"][metric]["values"] == [run[metric] for run in r["runs"]]
        assert [run["seed"] for run in r["runs"]] == seeds
    assert [row["method"] for row in results["table"]] == methods
    table = peft_compare.headline(results).splitlines()
    assert len(table) == 2 + len(methods) and table[2].startswith(f"| {methods[0]} | ")


def test_run_compare_writes_results_json(tmp_path):
    results = peft_compare.run_compare(tmp_path, methods=["probe", "ia3"], seeds=(0, 1), max_steps=2, subset=16)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    check_results(saved, ["probe", "ia3"], [0, 1])
    assert saved["resumed"] == []
    # a call on some methods keeps its part files, so that a later call on every method resumes them
    assert sorted(p.name for p in tmp_path.glob(".*.json")) == [
        f".{m}-seed-{s}.json" for m in ("ia3", "probe") for s in (0, 1)]
    again = peft_compare.run_compare(tmp_path, methods=["ia3"], seeds=(1,), max_steps=2, subset=16)
    assert again["resumed"] == [["ia3", 1]] and again["methods"]["ia3"]["runs"] == saved["methods"]["ia3"]["runs"][1:]


def test_a_full_run_deletes_its_part_files(tmp_path, monkeypatch):
    def fake_run(method, seed, data, *, max_steps=None, device=None):
        return {"method": method, "seed": seed, "trainable_parameters": 1, "total_parameters": 2,
                "linear_weight_bytes": 3, **{metric: 0.5 for metric in peft_compare.METRICS}}

    monkeypatch.setattr(peft_compare, "run_method", fake_run)
    monkeypatch.setattr(peft_compare, "adapter_workflow", lambda tmp: {})
    monkeypatch.setattr(peft_compare, "polarity_data", lambda subset=None: {"train": [], "test": []})
    results = peft_compare.run_compare(tmp_path)
    assert results["full_run"] is True and list(results["methods"]) == list(METHODS)
    assert not list(tmp_path.glob(".*.json"))  # every seed of every method is in results.json


def test_run_compare_resumes_after_an_interrupted_seed(tmp_path, monkeypatch):
    real, calls = peft_compare.run_method, []

    def run_method(method, seed, data, **kw):
        calls.append((method, seed))
        if (method, seed) == ("bitfit", 1) and calls.count((method, seed)) == 1:
            raise KeyboardInterrupt
        return real(method, seed, data, **kw)

    monkeypatch.setattr(peft_compare, "run_method", run_method)
    monkeypatch.setattr(peft_compare, "adapter_workflow", lambda tmp: {"skipped": True})
    with pytest.raises(KeyboardInterrupt):
        peft_compare.run_compare(tmp_path, methods=["bitfit"], seeds=(0, 1), max_steps=1, subset=16)
    assert (tmp_path / ".bitfit-seed-0.json").exists() and not (tmp_path / "results.json").exists()
    results = peft_compare.run_compare(tmp_path, methods=["bitfit"], seeds=(0, 1), max_steps=1, subset=16)
    assert calls == [("bitfit", 0), ("bitfit", 1), ("bitfit", 1)] and results["resumed"] == [["bitfit", 0]]
    check_results(results, ["bitfit"], [0, 1])
    # another configuration does not reuse a part file
    peft_compare.run_compare(tmp_path / "again", methods=["bitfit"], seeds=(0,), max_steps=1, subset=16)
    (tmp_path / "again" / ".bitfit-seed-0.json").write_text(json.dumps(
        {"key": {"max_steps": 99}, "run": {}, "artifacts": {}}))
    results = peft_compare.run_compare(tmp_path / "again", methods=["bitfit"], seeds=(0,), max_steps=1, subset=16)
    assert results["resumed"] == []


def test_run_compare_refuses_the_shipped_results(monkeypatch):
    from companion.recipes import RESULTS

    monkeypatch.setattr(peft_compare, "run_method", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(ValueError, match="shipped"):
        peft_compare.run_compare(RESULTS / "peft-compare", methods=["probe"], max_steps=1)


def test_shipped_results_say_how_to_make_them_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m companion.recipes peft-compare"):
        peft_compare.shipped_results(tmp_path)


def test_shipped_results_are_whole_and_their_numbers_follow_from_the_runs():
    import numpy as np

    from companion import recipes
    from companion.corpora import load_polarity

    results = peft_compare.shipped_results()
    assert results["full_run"] and list(results["methods"]) == list(METHODS)
    labels = np.array(load_polarity()["test"]["label"])
    for method, r in results["methods"].items():
        runs = r["runs"]
        assert [run["seed"] for run in runs] == [0, 1, 2], method
        assert r["trainable_parameters"] == EXPECTED.get(method, r["trainable_parameters"])
        for run in runs:  # each recorded accuracy is its recorded probabilities' accuracy
            right = (np.array(run["test_probabilities"]) > 0.5) == labels
            assert right.mean() == pytest.approx(run["test_accuracy"], abs=1e-6), method
        values = [run["test_accuracy"] for run in runs]
        assert r["metrics"]["test_accuracy"]["values"] == values
        assert r["metrics"]["test_accuracy"]["mean"] == pytest.approx(np.mean(values))
    # lora-r8 is polarity-lora's recipe run again (same seeds, same configuration): same results
    lora = recipes.shipped_results("polarity-lora")["runs"]
    assert [run["test_accuracy"] for run in results["methods"]["lora-r8"]["runs"]] == [
        run["test_accuracy"] for run in lora]
