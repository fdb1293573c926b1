"""Prompt tuning from scratch against peft's PROMPT_TUNING: same logits, loss, gradients, TEXT init."""

import companion  # noqa: F401  (first: offline Hugging Face cache)
import copy

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2LMHeadModel,
                          PreTrainedTokenizerFast)

from companion.lora import count_trainable
from companion.soft_prompt import SoftPrompt, load_into_peft, text_init_ids

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # peft 0.21 calls a transformers 5 method that is deprecated; nothing for us to change.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

N_VIRTUAL = 5
WORDS = ["[UNK]"] + "classify the sentiment of this review".split()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64)).eval()


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, vocab_size=100, max_position_embeddings=64)).eval()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Two rows, the second right-padded: pads are masked out and labelled -100."""
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def pair(base, task_type: str) -> tuple[SoftPrompt, torch.nn.Module]:
    """Ours and peft's around copies of `base`, starting from the same prompt embeddings."""
    ours = SoftPrompt(copy.deepcopy(base), N_VIRTUAL, generator=torch.Generator().manual_seed(3))
    theirs = get_peft_model(copy.deepcopy(base),
                            PromptTuningConfig(task_type=task_type, num_virtual_tokens=N_VIRTUAL))
    load_into_peft(ours, theirs)
    return ours, theirs


@pytest.fixture
def tokenizer_dir(tmp_path):
    """A tiny word-level tokenizer saved to disk, so peft's TEXT init can load it offline."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    return tmp_path


def test_same_logits_and_loss_as_peft_for_a_causal_lm():
    ours, theirs = pair(tiny_gpt2(), "CAUSAL_LM")
    with torch.no_grad():
        out_ours, out_theirs = ours(**batch()), theirs(**batch())
    assert out_ours.logits.shape == (2, N_VIRTUAL + 7, 100)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits)
    torch.testing.assert_close(out_ours.loss, out_theirs.loss)
    # The virtual positions are labelled -100, so the loss counts only real tokens, the first
    # of them included: the last virtual position predicts it.
    logits, labels = out_ours.logits[:, N_VIRTUAL - 1:-1], batch()["labels"]
    manual = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(out_ours.loss, manual)


def test_same_hidden_states_as_peft_for_an_encoder():
    ours, theirs = pair(tiny_bert(), "FEATURE_EXTRACTION")
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).last_hidden_state, theirs(**inputs).last_hidden_state)


def test_only_the_prompt_trains_and_counts_match_peft():
    ours, theirs = pair(tiny_gpt2(), "CAUSAL_LM")
    assert [name for name, p in ours.named_parameters() if p.requires_grad] == ["prompt"]
    assert count_trainable(ours) == theirs.get_nb_trainable_parameters()
    assert count_trainable(ours)[0] == N_VIRTUAL * 32


def test_a_training_step_moves_the_prompt_and_nothing_else():
    ours, theirs = pair(tiny_gpt2(), "CAUSAL_LM")
    ours(**batch()).loss.backward()
    theirs(**batch()).loss.backward()
    peft_grad = theirs.prompt_encoder["default"].embedding.weight.grad
    torch.testing.assert_close(ours.prompt.grad, peft_grad)  # same gradient as peft
    frozen = {k: v.clone() for k, v in ours.model.state_dict().items()}
    prompt = ours.prompt.detach().clone()
    optimizer = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()
    assert not torch.equal(ours.prompt, prompt)
    assert all(torch.equal(v, frozen[k]) for k, v in ours.model.state_dict().items())


def test_text_init_is_the_init_texts_embeddings_like_peft(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = "classify the sentiment"  # 3 tokens, repeated to 5: 1 2 3 1 2
    assert tokenizer(text)["input_ids"] == [1, 2, 3]
    assert text_init_ids([1, 2, 3], N_VIRTUAL) == [1, 2, 3, 1, 2]
    assert text_init_ids([1, 2, 3, 4, 5, 6, 7], N_VIRTUAL) == [1, 2, 3, 4, 5]  # longer: cut
    base = tiny_gpt2()
    ours = SoftPrompt(copy.deepcopy(base), N_VIRTUAL, init="text", init_text=text, tokenizer=tokenizer)
    assert torch.equal(ours.prompt, base.transformer.wte.weight[[1, 2, 3, 1, 2]])
    theirs = get_peft_model(copy.deepcopy(base), PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL, prompt_tuning_init="TEXT",
        prompt_tuning_init_text=text, tokenizer_name_or_path=str(tokenizer_dir)))
    assert torch.equal(ours.prompt, theirs.prompt_encoder["default"].embedding.weight)


def test_random_init_and_clear_errors():
    base = tiny_gpt2()
    prompt = SoftPrompt(base, 1000, generator=torch.Generator().manual_seed(0)).prompt
    assert abs(prompt.std().item() - 1) < 0.02 and prompt.dtype == torch.float32  # peft: N(0, 1)
    with pytest.raises(ValueError, match="init_text"):
        SoftPrompt(base, N_VIRTUAL, init="text")
    with pytest.raises(ValueError, match="unknown init"):
        SoftPrompt(base, N_VIRTUAL, init="vocab")
    with pytest.raises(ValueError, match="non-empty"):
        text_init_ids([], N_VIRTUAL)
    theirs = get_peft_model(tiny_gpt2(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    with pytest.raises(ValueError, match="num_virtual_tokens=5"):
        load_into_peft(SoftPrompt(tiny_gpt2(), N_VIRTUAL), theirs)
