"""Our BERT equals Hugging Face's BertForMaskedLM / BertForPreTraining weight for weight."""

import copy

import companion  # noqa: F401  (first: offline Hugging Face cache)
import pytest
import torch
from helpers import perturbed
from transformers import BertForMaskedLM
from transformers import BertForPreTraining as HFBertForPreTraining

import companion.attention
from companion.attention import MultiHeadAttention, attention, sinusoidal_positions
from companion.bert import BertConfig, BertForPreTraining, local_attention_init, to_hf_bert

VOCAB = 120


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(nsp_head: bool, seed: int = 0) -> BertForPreTraining:
    """A BERT whose every weight (LayerNorms and biases too) is random, so a misplaced one shows."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, max_position=32, n_layer=2, n_head=4, n_embd=32,
                        intermediate=64, nsp_head=nsp_head)
    return perturbed(BertForPreTraining(config))


def make_batch(seed: int = 1):
    """Ids, a padding mask (rows of 20, 13 and 6 real tokens), segments and MLM labels at 3 spots."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    mask[2, 6:] = 0
    ids = ids.masked_fill(mask == 0, 0)  # pad id 0
    segments = torch.zeros_like(ids)
    segments[:, 4:] = 1
    segments = segments * mask
    labels = torch.full_like(ids, -100)
    labels[:, [1, 3, 5]] = ids[:, [1, 3, 5]]
    return ids, mask, segments, labels


@pytest.mark.parametrize("padded", [False, True])
def test_mlm_logits_and_loss_match_bert_for_masked_lm(padded):
    model = make_model(nsp_head=False)
    hf = to_hf_bert(model)
    assert isinstance(hf, BertForMaskedLM)
    ids, mask, segments, labels = make_batch()
    if not padded:
        mask = None
    ours = model(ids, attention_mask=mask, token_type_ids=segments, labels=labels)
    theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=segments, labels=labels)
    assert torch.allclose(ours.logits, theirs.logits, atol=1e-5)
    assert torch.allclose(ours.loss, theirs.loss, atol=1e-5)
    assert ours.nsp_logits is None


def test_padding_mask_changes_the_result_and_hides_padding():
    model = make_model(nsp_head=False)
    ids, mask, segments, _ = make_batch()
    masked = model(ids, attention_mask=mask, token_type_ids=segments).logits
    unmasked = model(ids, token_type_ids=segments).logits
    assert not torch.allclose(masked[1:], unmasked[1:], atol=1e-3)  # the mask matters...
    other = ids.clone()
    other[mask == 0] = 7  # ...and what sits under it does not, on the real positions
    real = mask.bool()
    again = model(other, attention_mask=mask, token_type_ids=segments).logits
    assert torch.allclose(again[real], masked[real], atol=1e-5)
    # a row without padding gives the same logits with or without the mask
    assert torch.allclose(masked[0], unmasked[0], atol=1e-5)


def test_pretraining_heads_and_total_loss_match_bert_for_pretraining():
    model = make_model(nsp_head=True)
    hf = to_hf_bert(model)
    assert isinstance(hf, HFBertForPreTraining)
    ids, mask, segments, labels = make_batch()
    nsp = torch.tensor([0, 1, 1])
    ours = model(ids, attention_mask=mask, token_type_ids=segments, labels=labels, next_sentence_label=nsp)
    theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=segments, labels=labels,
                next_sentence_label=nsp)
    assert torch.allclose(ours.logits, theirs.prediction_logits, atol=1e-5)
    assert torch.allclose(ours.nsp_logits, theirs.seq_relationship_logits, atol=1e-5)
    assert torch.allclose(ours.loss, theirs.loss, atol=1e-5)
    mlm_only = model(ids, attention_mask=mask, token_type_ids=segments, labels=labels).loss
    nsp_only = torch.nn.functional.cross_entropy(ours.nsp_logits, nsp)
    assert torch.allclose(ours.loss, mlm_only + nsp_only, atol=1e-6)


def test_loss_counts_only_labelled_positions():
    model = make_model(nsp_head=False)
    ids, mask, segments, labels = make_batch()
    out = model(ids, attention_mask=mask, token_type_ids=segments, labels=labels)
    logp = out.logits.log_softmax(-1)
    where = labels != -100
    assert where.sum() == 9
    assert torch.allclose(out.loss, -logp[where].gather(1, labels[where][:, None]).mean(), atol=1e-5)


def test_tied_decoder_parameter_count_and_errors():
    for nsp_head in (False, True):
        model = make_model(nsp_head=nsp_head)
        hf = to_hf_bert(model)
        assert model.num_parameters() == hf.num_parameters()
        assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight
    ids, mask, segments, labels = make_batch()
    with pytest.raises(ValueError, match="nsp_head=True"):
        make_model(nsp_head=False)(ids, next_sentence_label=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="max_position"):
        make_model(nsp_head=False)(torch.ones(1, 33, dtype=torch.long))


def test_loss_scores_only_selected_positions_and_equals_full_cross_entropy():
    model = make_model(nsp_head=False)
    ids, mask, segments, labels = make_batch()
    out = model(ids, attention_mask=mask, token_type_ids=segments, labels=labels)
    assert "logits" not in out.__dict__  # not computed yet: the loss needed 9 positions, not 60
    full = torch.nn.functional.cross_entropy(out.logits.reshape(-1, VOCAB), labels.reshape(-1))
    assert torch.allclose(out.loss, full, atol=1e-6)
    assert out.logits.shape == (3, 20, VOCAB) and out.hidden_states.shape == (3, 20, 32)


def test_gradients_of_the_sparse_loss_equal_those_of_the_full_loss():
    ids, mask, segments, labels = make_batch()
    grads = []
    for sparse in (True, False):
        model = make_model(nsp_head=False).train()
        out = model(ids, attention_mask=mask, token_type_ids=segments, labels=labels if sparse else None)
        loss = out.loss if sparse else torch.nn.functional.cross_entropy(out.logits.reshape(-1, VOCAB),
                                                                          labels.reshape(-1))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_attention_is_companion_attention_and_the_fast_path_equals_the_formula(monkeypatch):
    model = make_model(nsp_head=True)
    assert all(type(block.attn) is MultiHeadAttention for block in model.blocks)
    ids, mask, segments, _ = make_batch()
    fast = model(ids, attention_mask=mask, token_type_ids=segments)
    monkeypatch.setattr(companion.attention, "attention",
                        lambda *a, **kw: attention(*a, **{**kw, "need_weights": True}))
    slow = model(ids, attention_mask=mask, token_type_ids=segments)
    assert torch.allclose(slow.logits, fast.logits, atol=1e-5)
    assert torch.allclose(slow.nsp_logits, fast.nsp_logits, atol=1e-5)


def test_local_attention_init_sets_queries_and_keys_to_the_identity_and_dropout_trains():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, max_position=32, n_layer=1, n_head=2, n_embd=16,
                        intermediate=32, dropout=0.5, nsp_head=False)
    model = local_attention_init(BertForPreTraining(config))
    attn = model.blocks[0].attn
    assert torch.equal(attn.q_proj.weight, torch.eye(16)) and torch.equal(attn.k_proj.weight, torch.eye(16))
    assert not torch.equal(attn.v_proj.weight, torch.eye(16))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # only the attention weights are dropped now
    ids = torch.randint(1, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(model(ids).hidden_states, model(ids).hidden_states)
    model.eval()
    assert torch.equal(model(ids).hidden_states, model(ids).hidden_states)


def test_local_attention_init_halves_for_the_ablation():
    config = BertConfig(vocab_size=VOCAB, max_position=32, n_layer=1, n_head=2, n_embd=16, intermediate=32,
                        nsp_head=False)
    torch.manual_seed(0)
    base = BertForPreTraining(config)
    positions_only = local_attention_init(copy.deepcopy(base), identity=False)
    identity_only = local_attention_init(copy.deepcopy(base), sinusoids=False)
    both = local_attention_init(copy.deepcopy(base))
    assert torch.equal(positions_only.pos_emb.weight, both.pos_emb.weight)
    assert torch.equal(positions_only.pos_emb.weight, 0.1 * sinusoidal_positions(32, 16))
    assert torch.equal(positions_only.blocks[0].attn.q_proj.weight, base.blocks[0].attn.q_proj.weight)
    assert torch.equal(identity_only.pos_emb.weight, base.pos_emb.weight)
    assert torch.equal(identity_only.blocks[0].attn.k_proj.weight, torch.eye(16))
    with pytest.raises(ValueError, match="change nothing"):
        local_attention_init(base, sinusoids=False, identity=False)
