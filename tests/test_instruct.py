"""companion.instruct: assistant-only chat labels, packing, the mixture and the scores of generated text."""

import json

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import companion
from companion import instruct
from companion.finetune import SMOLLM2
from companion.instruct import chat_example, chrf, collate_packed, pack, parse_json_object, score
from companion.metrics import IGNORE_INDEX

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine, thanks."}]


@pytest.fixture(scope="module")
def smol_tokenizer():
    companion.resources.require("smollm2")
    return AutoTokenizer.from_pretrained(SMOLLM2)


def _with_generation_markers(template: str) -> str:
    """SmolLM2's template with {% generation %} around each assistant turn's content and <|im_end|>."""
    turn = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    assert turn in template
    marked = ("{% if message['role'] == 'assistant' %}{{'<|im_start|>assistant\n'}}{% generation %}"
              "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{'\n'}}{% else %}" + turn + "{% endif %}")
    return template.replace(turn, marked)


def test_multi_turn_labels_are_the_assistant_turns_and_their_end_tokens(smol_tokenizer):
    example = chat_example(smol_tokenizer, CHAT)
    ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
    kept = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert smol_tokenizer.decode(kept) == "Hello!<|im_end|>Fine, thanks.<|im_end|>"
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels))


def test_labels_equal_transformers_assistant_mask_with_generation_markers(smol_tokenizer):
    conversations = [CHAT, CHAT[:2], [{"role": "system", "content": "Be brief."}] + CHAT]
    for messages in conversations:
        ours = chat_example(smol_tokenizer, messages)
        ref = smol_tokenizer.apply_chat_template(
            messages, chat_template=_with_generation_markers(smol_tokenizer.chat_template),
            return_assistant_tokens_mask=True, return_dict=True)
        assert ours["input_ids"].tolist() == ref["input_ids"]
        assert [int(label != IGNORE_INDEX) for label in ours["labels"].tolist()] == ref["assistant_masks"]


def test_chat_example_rejects_bad_conversations(smol_tokenizer):
    with pytest.raises(ValueError, match="no assistant turn"):
        chat_example(smol_tokenizer, [{"role": "user", "content": "Hi"}])
    with pytest.raises(ValueError, match="empty"):
        chat_example(smol_tokenizer, [])
    with pytest.raises(ValueError, match="role"):
        chat_example(smol_tokenizer, [{"role": "bot", "content": "Hi"}])
    with pytest.raises(ValueError, match="max_length"):
        chat_example(smol_tokenizer, CHAT, max_length=5)


def test_plain_template_for_a_model_without_one():
    tokenizer = AutoTokenizer.from_pretrained(companion.resources.model_dir("book-gpt"))
    tokenizer.chat_template = instruct.PLAIN_CHAT_TEMPLATE
    example = chat_example(tokenizer, CHAT)
    assert tokenizer.decode(example["input_ids"]) == (
        "user: Hi\nassistant: Hello!<|endoftext|>user: How are you?\nassistant: Fine, thanks.<|endoftext|>")
    kept = [i for i, label in zip(example["input_ids"].tolist(), example["labels"].tolist()) if label >= 0]
    assert tokenizer.decode(kept) == "Hello!<|endoftext|>Fine, thanks.<|endoftext|>"


def _examples(lengths, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=g)
        labels = ids.clone()
        labels[: n // 2] = IGNORE_INDEX
        out.append({"input_ids": ids, "labels": labels})
    return out


def test_pack_keeps_every_example_whole_and_restarts_positions():
    examples = _examples([5, 3, 7, 2, 4])
    rows = pack(examples, block_size=8)
    assert sorted(len(r["input_ids"]) for r in rows) == [6, 7, 8]  # 7 | 5+3 | 4+2, first fit longest first
    assert sum(len(r["input_ids"]) for r in rows) == 21
    for r in rows:
        starts = (r["position_ids"] == 0).nonzero().flatten().tolist()
        assert starts[0] == 0 and len(r["position_ids"]) == len(r["labels"])
    with pytest.raises(ValueError, match="block_size"):
        pack(examples, block_size=6)
    with pytest.raises(ValueError, match="empty"):
        pack([], block_size=8)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_packed_row_gives_each_example_its_own_loss(kind):
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    model.eval()
    examples = _examples([9, 6, 11], seed=1)
    rows = pack(examples, block_size=32)
    assert len(rows) == 1
    batch = collate_packed(rows, pad_id=0)
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=e["input_ids"][None]).logits[0]
                           for e in sorted(examples, key=lambda e: -len(e["input_ids"]))])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)


def test_collate_packed_pads_as_a_separate_unlabelled_segment():
    rows = pack(_examples([4, 3]), block_size=4)
    batch = collate_packed(rows, pad_id=7)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["labels"][1, 3] == IGNORE_INDEX and batch["input_ids"][1, 3] == 7
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 0]


def test_parse_json_object_never_raises_on_malformed_output():
    assert parse_json_object('Sure! {"person": ["Tom"]} hope that helps') == {"person": ["Tom"]}
    for bad in ["", "no json here", '{"person": ["Tom"', "[1, 2]", "{'person': 'single quotes'}"]:
        assert parse_json_object(bad) is None


def test_entity_scores_count_malformed_json_as_a_failure():
    gold = json.dumps({"person": ["Tom Hanks"], "geo-loc": ["Paris"]})
    assert score("entities", gold, gold) == {"f1": 1.0, "valid": 1.0}
    assert score("entities", '{"person": ["tom hanks"]}', gold) == {"f1": pytest.approx(2 / 3), "valid": 1.0}
    assert score("entities", '{"person": ["Tom', gold) == {"f1": 0.0, "valid": 0.0}
    assert score("entities", "{}", "{}") == {"f1": 1.0, "valid": 1.0}
    assert score("entities", '{"person": 3}', gold)["f1"] == 0.0  # wrong shape, still no crash


def test_segmentation_pos_and_sentiment_scores():
    assert score("segmentation", "迈向 充满 希望", "迈向 充满 希望") == {"f1": 1.0, "valid": 1.0}
    s = score("segmentation", "迈向充满 希望", "迈向 充满 希望")  # 1 of 2 predicted right, 1 of 3 gold
    assert s["f1"] == pytest.approx(2 * 1 / 5) and s["valid"] == 1.0
    assert score("segmentation", "迈向 充满", "迈向 充满 希望")["valid"] == 0.0  # characters lost
    assert score("pos", "The/DT cat/NN", "The/DT cat/NN") == {"accuracy": 1.0, "valid": 1.0}
    assert score("pos", "The/DT cat/VB", "The/DT cat/NN") == {"accuracy": 0.5, "valid": 1.0}
    assert score("pos", "The DT", "The/DT cat/NN") == {"accuracy": 0.0, "valid": 0.0}
    assert score("sentiment", " Positive.", "positive") == {"exact": 1.0, "valid": 1.0}
    assert score("sentiment", "I liked it", "positive") == {"exact": 0.0, "valid": 0.0}
    with pytest.raises(ValueError, match="task"):
        score("translation", "a", "b")


def test_chrf_by_hand():
    assert chrf("abc", "abc") == 100.0
    assert chrf("xyz", "abc") == 0.0
    # "ab" vs "abc": n=1 P=1 R=2/3, n=2 P=1 R=1/2 (n>=3: no hypothesis n-grams, skipped)
    p, r = 1.0, (2 / 3 + 1 / 2) / 2
    assert chrf("ab", "abc") == pytest.approx(100 * 5 * p * r / (4 * p + r))
    assert chrf("a b c", "abc") == 100.0  # spaces are ignored
    assert chrf("", "abc") == 0.0


def test_instruction_mixture_is_balanced_and_reproducible():
    first = instruct.instruction_mixture("validation", 3, seed=1, tasks=("sentiment", "chat"))
    again = instruct.instruction_mixture("validation", 3, seed=1, tasks=("sentiment", "chat"))
    assert first == again
    assert sorted(it.task for it in first) == ["chat"] * 3 + ["sentiment"] * 3
    assert all(it.messages[-1]["role"] == "assistant" for it in first)
    with pytest.raises(ValueError, match="fewer than"):
        instruct.instruction_mixture("validation", 3, tasks=("sentiment",), fits=lambda it: False)
    assert instruct.instruction_mixture("validation", 3, tasks=("sentiment",), fits=lambda it: False,
                                        allow_fewer=True) == []


def _tiny_llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         eos_token_id=2, pad_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


def test_batched_left_padded_answers_equal_one_by_one(smol_tokenizer):
    model = _tiny_llama(len(smol_tokenizer))
    prompts = [[{"role": "user", "content": text}]
               for text in ["Hi", "What is the capital of France? Answer briefly.", "Name a colour."]]
    batched = instruct.generate_answers(model, smol_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    alone = [instruct.generate_answers(model, smol_tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == alone
    assert smol_tokenizer.padding_side == "right"  # restored
    with pytest.raises(ValueError, match="max_new_tokens"):
        instruct.generate_answers(model, smol_tokenizer, prompts, max_new_tokens=0)


def test_task_scores_and_generation_budget(smol_tokenizer):
    items = instruct.instruction_mixture("validation", 2, seed=0, tasks=("sentiment", "chat"))
    perfect = instruct.task_scores(items, [it.reference for it in items])
    assert perfect["sentiment"] == {"exact": 1.0, "valid": 1.0} and perfect["chat"]["chrf"] == 100.0
    with pytest.raises(ValueError, match="answers"):
        instruct.task_scores(items, [])
    longest = max(len(smol_tokenizer(it.reference, add_special_tokens=False)["input_ids"]) for it in items)
    assert instruct.max_new_tokens(smol_tokenizer, items) == longest + 16


def test_recipe_writes_parts_and_results_and_resumes(tmp_path, monkeypatch, smol_tokenizer):
    import dataclasses

    small = dataclasses.replace(instruct.TUNE_CONFIGS["smollm2"], tasks=("sentiment", "chat"), per_task=2,
                                batch_size=1, eval_per_task=1)
    monkeypatch.setitem(instruct.TUNE_CONFIGS, "smollm2", small)
    loads = []

    def tiny(name):
        loads.append(name)
        return _tiny_llama(len(smol_tokenizer)), smol_tokenizer

    monkeypatch.setattr(instruct, "load_model", tiny)
    out = tmp_path / "run"
    results = instruct.run_recipe(out, models=("smollm2",), seeds=(0, 1), max_steps=1, progress=False)
    runs = results["models"]["smollm2"]["runs"]
    assert sorted(runs) == ["base", "full-seed-0", "full-seed-1", "lora-seed-0", "lora-seed-1"]
    assert results["models"]["smollm2"]["scores"]["lora"]["sentiment"]["exact"]["values"].__len__() == 2
    assert (out / "smollm2" / "lora-seed-0" / "adapter_model.safetensors").exists()
    assert not (out / "smollm2" / "lora-seed-0" / "README.md").exists()  # no model card with local paths
    saved = json.loads((out / "smollm2" / "lora-seed-0" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert instruct.shipped_results(out)["artifacts"] == results["artifacts"]
    assert len(instruct.shipped_answers("smollm2", "full-seed-1", out)) == 2
    tuned, _ = instruct.load_tuned("smollm2", out / "smollm2" / "lora-seed-0")
    assert instruct.answer_all(tuned, smol_tokenizer, instruct.eval_items(small, smol_tokenizer)) == \
        instruct.shipped_answers("smollm2", "lora-seed-0", out)
    before = len(loads)
    again = instruct.run_recipe(out, models=("smollm2",), seeds=(0, 1), max_steps=1, progress=False)
    assert len(loads) == before + 1  # only the base model is loaded: every run is read from its part
    assert again["models"]["smollm2"]["scores"] == results["models"]["smollm2"]["scores"]
