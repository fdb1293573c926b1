"""SFT examples and collator: prompt masking, padding on either side, last positions, bad input."""

import companion  # noqa: F401  (first: offline Hugging Face cache)

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from companion.metrics import IGNORE_INDEX
from companion.sft import SFTCollator, last_positions, sft_example

pytestmark = pytest.mark.usefixtures("one_thread")


def test_example_masks_the_prompt_only():
    e = sft_example([5, 6, 7], [8, 9])
    assert e["input_ids"].tolist() == [5, 6, 7, 8, 9]
    assert e["labels"].tolist() == [IGNORE_INDEX] * 3 + [8, 9]
    assert e["input_ids"].dtype == e["labels"].dtype == torch.long


def test_example_without_mask_labels_everything():
    e = sft_example([5, 6], [8], answer_only=False)
    assert e["labels"].tolist() == e["input_ids"].tolist() == [5, 6, 8]


def test_example_accepts_tensors_and_tuples_and_an_empty_prompt():
    e = sft_example(torch.tensor([1, 2]), (3,))
    assert e["labels"].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 3]
    assert sft_example([], [4])["labels"].tolist() == [4]


def test_example_max_length_is_a_check():
    assert len(sft_example([1, 2], [3], max_length=3)["input_ids"]) == 3
    with pytest.raises(ValueError, match="max_length=3: shorten the prompt"):
        sft_example([1, 2, 3], [4], max_length=3)


@pytest.mark.parametrize("prompt, answer, error, message", [
    ([1], [], ValueError, "answer_ids is empty"),
    ("hello", [1], TypeError, "tokenize the text first"),
    ([1], "a", TypeError, "tokenize the text first"),
    ([1.0], [2], TypeError, "int token ids"),
    ([1], [-100], ValueError, "-100 belongs in labels"),
    (torch.ones(2, 2, dtype=torch.long), [1], ValueError, "one sequence of token ids"),
])
def test_example_rejects_bad_input(prompt, answer, error, message):
    with pytest.raises(error, match=message):
        sft_example(prompt, answer)


def test_collator_pads_right_with_ignored_labels():
    batch = SFTCollator(pad_id=0)([sft_example([1, 2], [3]), sft_example([4], [5, 6, 7])])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 3, -100], [-100, 5, 6, 7]]
    assert last_positions(batch["attention_mask"]).tolist() == [2, 3]


def test_collator_pads_left_for_generation():
    batch = SFTCollator(pad_id=9, padding_side="left")([sft_example([1, 2], [3]), sft_example([4], [5])])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [9, 4, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 3], [-100, -100, 5]]


def test_collator_without_labels_gives_prompts_only():
    batch = SFTCollator(pad_id=0)([{"input_ids": torch.tensor([1, 2])}, {"input_ids": torch.tensor([3])}])
    assert sorted(batch) == ["attention_mask", "input_ids"]
    assert batch["input_ids"].tolist() == [[1, 2], [3, 0]]


def test_collator_rejects_bad_input():
    with pytest.raises(ValueError, match="padding_side"):
        SFTCollator(pad_id=0, padding_side="middle")
    with pytest.raises(ValueError, match="pad_id"):
        SFTCollator(pad_id=None)
    collate = SFTCollator(pad_id=0)
    with pytest.raises(ValueError, match="empty list"):
        collate([])
    with pytest.raises(ValueError, match="some examples have labels"):
        collate([sft_example([1], [2]), {"input_ids": torch.tensor([1])}])
    with pytest.raises(ValueError, match="2 input ids but 1 labels"):
        collate([{"input_ids": torch.tensor([1, 2]), "labels": torch.tensor([2])}])


def test_last_positions_rejects_left_padding_and_empty_rows():
    with pytest.raises(ValueError, match="not right-padded"):
        last_positions(torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="all zeros"):
        last_positions(torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        last_positions(torch.tensor([1, 1]))


def test_masked_loss_of_a_causal_lm_is_the_answer_loss():
    """A transformers causal LM's loss on a padded SFT batch = cross-entropy on the answer tokens only."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    examples = [sft_example([1, 2, 3], [4, 5]), sft_example([6], [7, 8, 9])]
    batch = SFTCollator(pad_id=0)(examples)
    with torch.no_grad():
        loss = model(**batch).loss
        by_hand = []
        for e in examples:  # each example alone, unpadded: score the answer positions
            logits = model(e["input_ids"][None]).logits[0, :-1]
            keep = e["labels"][1:] != IGNORE_INDEX
            by_hand.append(F.cross_entropy(logits[keep], e["labels"][1:][keep], reduction="none"))
    assert torch.allclose(loss, torch.cat(by_hand).mean(), atol=1e-6)


def test_last_positions_pick_the_next_token_logits():
    """The logits at last_positions of a right-padded batch equal those of each prompt run alone."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    prompts = [[1, 2, 3, 4], [5, 6]]
    batch = SFTCollator(pad_id=0)([{"input_ids": torch.tensor(p)} for p in prompts])
    with torch.no_grad():
        logits = model(**batch).logits[torch.arange(2), last_positions(batch["attention_mask"])]
        for row, p in enumerate(prompts):
            assert torch.allclose(logits[row], model(torch.tensor([p])).logits[0, -1], atol=1e-5)
