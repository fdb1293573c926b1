"""The pre-training recipes and the checkpoints the book ships (companion/checkpoints)."""

import json
import math
from pathlib import Path

import pytest
import torch

from companion import recipes, resources
from companion.data import ByteTokenizer, CharTokenizer
from companion.resources import REGISTRY, ResourceMissing

pytestmark = pytest.mark.usefixtures("one_thread")
SHIPPED = [key for key, r in REGISTRY.items() if r.kind == "checkpoint"]
TEXTS = ["the film is good .", "  two  spaces\nand a newline\t", "我爱自然语言处理, café", "", "a" * 300]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_matches_the_companion_byte_tokenizer(text):
    hf, ours = recipes.byte_tokenizer(), ByteTokenizer(specials=(recipes.EOT,))
    assert hf(text)["input_ids"] == ours.encode(text)
    assert hf.decode(ours.encode(text)) == text
    assert len(hf) == ours.vocab_size == 257 and hf.eos_token_id == ours.special_id(recipes.EOT) == 256


def test_byte_tokenizer_keeps_endoftext_as_one_special_token():
    ids = recipes.byte_tokenizer()(f"end{recipes.EOT}start")["input_ids"]
    assert ids == [*b"end", 256, *b"start"]


@pytest.mark.parametrize("text", TEXTS[:2] + ["an unseen character: é", "<mask> in the middle"])
def test_char_tokenizer_matches_the_companion_char_tokenizer(text):
    corpus = ["the movie was good and the acting was good", "a bad film !"]
    hf = recipes.char_tokenizer(corpus)
    ours = CharTokenizer.from_text("".join(corpus), specials=CharTokenizer.BERT_SPECIALS)
    if text.startswith("<mask>"):  # the special token is one token, as in every transformers tokenizer
        assert hf(text)["input_ids"][:2] == [ours.cls_id, ours.mask_id]
        return
    assert hf(text)["input_ids"] == ours.encode(text, add_cls_sep=True)
    assert (hf.pad_token_id, hf.mask_token_id, len(hf)) == (ours.pad_id, ours.mask_id, ours.vocab_size)


def test_char_tokenizer_round_trips_known_text_and_reloads_with_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = recipes.char_tokenizer(["the movie was good"])
    assert tok.decode(tok("good movie")["input_ids"], skip_special_tokens=True) == "good movie"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("good movie")["input_ids"] == tok("good movie")["input_ids"] and again.mask_token == "<mask>"


def test_mlm_blocks_start_with_cls_and_separate_documents():
    tok = recipes.char_tokenizer(["abcdefgh"])
    blocks = recipes.mlm_blocks(tok, ["abc", "defgh"], block_size=4)
    assert blocks.shape == (3, 4) and (blocks[:, 0] == tok.cls_token_id).all()
    assert tok.decode(blocks[:, 1:].flatten()) == "abc<sep>defgh"  # the last <sep> did not fill a row


@pytest.mark.parametrize("key", sorted(recipes.RECIPES))
def test_a_short_run_of_each_recipe_writes_a_loadable_folder(key, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    figures = recipes.run(recipes.RECIPES[key], tmp_path, steps=12)
    assert figures["steps"] == 12 and figures["tokens"] == 12 * recipes.RECIPES[key].batch_size * recipes.RECIPES[key].block_size
    saved = json.loads((tmp_path / "recipe.json").read_text())
    assert saved["final_validation_loss"] == figures["final_validation_loss"]
    auto = AutoModelForCausalLM if recipes.RECIPES[key].objective == "clm" else AutoModelForMaskedLM
    model, tok = auto.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert model.config.vocab_size == len(tok)
    # 12 steps already beat a uniform guess over the vocabulary
    assert figures["final_validation_loss"] < math.log(len(tok))


def test_registry_records_each_shipped_checkpoint_and_its_recipe():
    assert sorted(SHIPPED) == sorted(recipes.RECIPES)
    for key in SHIPPED:
        r = REGISTRY[key]
        folder = resources.model_dir(key)  # hashes every file against the registry
        saved = json.loads((folder / "recipe.json").read_text())
        for name in ("steps", "tokens", "train_seconds", "device", "final_validation_loss"):
            assert r.recipe[name] == saved[name], (key, name)
        assert saved["recipe"] == {**recipes.RECIPES[key].__dict__}
        assert (folder / "model.safetensors").stat().st_size < 10 * 2**20


@pytest.mark.parametrize("key", SHIPPED)
def test_shipped_checkpoint_reproduces_its_recorded_validation_loss(key):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    recipe = recipes.RECIPES[key]
    _, _, _, val_data, collate = recipes.build(recipe)
    auto = AutoModelForCausalLM if recipe.objective == "clm" else AutoModelForMaskedLM
    model = auto.from_pretrained(resources.model_dir(key))
    loss = recipes.validation_loss(recipe, model, val_data, collate)
    assert loss == pytest.approx(REGISTRY[key].recipe["final_validation_loss"], abs=2e-3)


def test_a_corrupt_checkpoint_is_refused_with_the_command_that_remakes_it(tmp_path, monkeypatch):
    key = SHIPPED[0]
    for name in REGISTRY[key].files:
        (tmp_path / key).mkdir(exist_ok=True)
        (tmp_path / key / name).write_bytes((resources.CHECKPOINTS / key / name).read_bytes())
    (tmp_path / key / "model.safetensors").write_bytes(b"not a model")
    monkeypatch.setattr(resources, "CHECKPOINTS", tmp_path)
    with pytest.raises(ResourceMissing, match=f"python -m companion.recipes {key}"):
        resources.model_dir(key)


# --- the command line never overwrites a shipped checkpoint ------------------------------------

@pytest.fixture
def fake_run(monkeypatch):
    """recipes.run replaced by a stub that writes a small folder and records where."""
    outs = []

    def run(recipe, out, *, steps=None):
        outs.append(Path(out))
        if Path(out).resolve().is_relative_to(resources.CHECKPOINTS.resolve()):
            return {"steps": 0, "final_validation_loss": 1.0}  # never touch the real shipped copies
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "recipe.json").write_text(json.dumps({"steps": steps or recipe.steps}))
        return {"steps": steps or recipe.steps, "final_validation_loss": 1.0, "history": {}}

    monkeypatch.setattr(recipes, "run", run)
    return outs


def test_the_command_writes_to_runs_key_by_default(tmp_path, monkeypatch, fake_run, capsys):
    monkeypatch.chdir(tmp_path)
    assert recipes.main(["book-gpt", "--steps", "3"]) == 0
    assert fake_run == [Path("runs/book-gpt")]
    assert f"wrote {tmp_path / 'runs' / 'book-gpt'}" in capsys.readouterr().out


@pytest.mark.parametrize("inside", ["book-gpt", "book-bert", ".", "book-gpt/sub"])
def test_the_command_refuses_an_out_inside_the_shipped_checkpoints(inside, fake_run, capsys):
    out = resources.CHECKPOINTS / inside
    with pytest.raises(SystemExit) as exit_info:
        recipes.main(["book-gpt", "--steps", "3", "--out", str(out)])
    assert exit_info.value.code != 0 and fake_run == []
    assert "where the shipped checkpoints live" in capsys.readouterr().err


def test_run_refuses_the_shipped_folder_before_training(monkeypatch):
    monkeypatch.setattr(recipes, "build", lambda recipe: pytest.fail("run() started training"))
    with pytest.raises(ValueError, match="where the shipped checkpoints live"):
        recipes.run(recipes.RECIPES["book-gpt"], resources.CHECKPOINTS / "book-gpt", steps=1)


def test_replace_shipped_swaps_the_new_run_in(tmp_path, monkeypatch, fake_run, capsys):
    shipped = tmp_path / "checkpoints"
    (shipped / "book-gpt").mkdir(parents=True)
    (shipped / "book-gpt" / "old-file.bin").write_bytes(b"old")
    monkeypatch.setattr(recipes, "CHECKPOINTS", shipped)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):  # the shipped copy is the recipe's full run
        recipes.main(["book-gpt", "--steps", "3", "--replace-shipped"])
    assert recipes.main(["book-gpt", "--replace-shipped"]) == 0
    assert sorted(p.name for p in (shipped / "book-gpt").iterdir()) == ["recipe.json"]
    assert sorted(p.name for p in shipped.iterdir()) == ["book-gpt"]  # no temporary folder left
    assert "tools/register_checkpoints.py" in capsys.readouterr().out
