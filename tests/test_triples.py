"""Information extraction to triples: the held-out templates, scoring, the pattern baseline, JSON parsing."""

import json

import pytest

from companion import triples as T
from companion.triples import Example, Template


def test_templates_are_split_without_overlap():
    for language in T.LANGUAGES:
        by_split = {s: {t.text for t in T.templates(language, s)} for s in T.SPLITS}
        assert not by_split["train"] & by_split["test"]
        assert not by_split["train"] & by_split["validation"]
        assert not by_split["validation"] & by_split["test"]
        for relation in T.RELATIONS[language]:
            counts = [sum(t.relation == relation for t in T.templates(language, s)) for s in T.SPLITS]
            assert counts == [3, 1, 2], (language, relation)
        for t in T.templates(language):
            assert t.text.count("{h}") == 1 and t.text.count("{t}") == 1


def test_fill_tags_head_and_tail_and_reads_back():
    template = Template("is-part-of", "{t} contains {h}.", "test")
    text, tokens, tags = T.fill(template, "snow", "winter sky", "en")
    assert text == "Winter sky contains snow."
    assert tags == ["B-T:is-part-of", "I-T:is-part-of", "O", "B-H:is-part-of", "O"]
    assert T.triples_from_tags(tokens, tags, "en") == [("snow", "is-part-of", "Winter sky")]
    text, tokens, tags = T.fill(Template("born-in", "{t}是{h}的故乡。", "test"), "李鹏", "上海", "zh")
    assert text == "上海是李鹏的故乡。" and len(tokens) == len(text)
    assert T.triples_from_tags(tokens, tags, "zh") == [("李鹏", "born-in", "上海")]


def test_made_examples_use_only_their_split_and_their_tags_give_back_the_gold():
    triples = [("snow", "is-part-of", "winter"), ("gun", "is-a", "weapon"), ("cold", "is-property-of", "steel")]
    examples = T.make_examples(triples, "en", "test", 30, seed=1)
    test_texts = {t.text for t in T.templates("en", "test")}
    for e in examples:
        assert set(e.templates) <= test_texts and 1 <= len(e.triples) <= 2
        found = T.triples_from_tags(e.tokens, e.tags, "en")
        assert T.score_triples([e.triples], [found]).f1 == 1.0
    assert any(len(e.triples) == 2 for e in examples)
    with pytest.raises(ValueError, match="no test triples"):
        T.make_examples([], "en", "test", 3, seed=0)


def test_scoring_by_hand():
    gold = [[("snow", "is-part-of", "winter"), ("gun", "is-a", "weapon")], [("cold", "is-property-of", "steel")]]
    pred = [[("Snow ", "is part of", "the Winter."), ("snow", "is-part-of", "winter"), ("gun", "is-a", "tool")],
            []]
    s = T.score_triples(gold, pred)
    # text 1: two distinct predictions (the first two are the same triple after normalising), one right
    assert (s.n_gold, s.n_pred, s.n_correct) == (3, 2, 1)
    assert s.precision == pytest.approx(1 / 2) and s.recall == pytest.approx(1 / 3)
    assert s.f1 == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    # entities: {snow, winter, gun, weapon} and {cold, steel}, against {snow, winter, gun, tool} and {}
    e = T.score_entities(gold, pred)
    assert (e.n_gold, e.n_pred, e.n_correct) == (6, 4, 3)
    empty = T.score_triples(gold, [[], []])
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)
    assert T.score_triples(gold, gold).f1 == 1.0
    assert T.scores_dict(gold, gold)["entity_f1"] == 1.0


def test_scoring_rejects_bad_input():
    gold = [[("a", "is-a", "b")]]
    with pytest.raises(ValueError, match="1 texts but pred has 2"):
        T.score_triples(gold, [[], []])
    with pytest.raises(ValueError, match="three strings"):
        T.score_triples(gold, [[("a", "is-a")]])
    with pytest.raises(ValueError, match="one list of triples per text"):
        T.score_triples(gold, ["a is-a b"])
    with pytest.raises(ValueError, match="language"):
        T.templates("fr")
    with pytest.raises(ValueError, match="split"):
        T.templates("en", "dev")
    with pytest.raises(ValueError, match="no templates"):
        T.PatternExtractor("en", [])
    with pytest.raises(ValueError, match="3 tokens but 2 tags"):
        T.triples_from_tags(["a", "b", "c"], ["O", "O"], "en")


def test_normalise():
    assert T.normalise("  The  Woodwind\tInstrument. ") == "woodwind instrument"
    assert T.normalise("上海。") == "上海"
    assert T.normalise_relation("Is A") == "is-a" and T.normalise_relation("is_part_of") == "is-part-of"


def test_pattern_baseline_reads_its_templates_and_only_them():
    extract = T.PatternExtractor("en", T.templates("en", "train"))
    assert extract("Saxophone is a kind of woodwind instrument.") == [("Saxophone", "is-a", "woodwind instrument")]
    # "{t} is usually {h}." is tried before the shorter "{t} is {h}."
    assert extract("Steel is usually cold. Snow is part of winter.") == [
        ("cold", "is-property-of", "Steel"), ("Snow", "is-part-of", "winter")]
    assert extract("Winter contains snow.") == []  # a test wording: no training pattern matches
    zh = T.PatternExtractor("zh", T.templates("zh", "train"))
    assert zh("李鹏出生于上海。新华社位于北京。") == [
        ("李鹏", "born-in", "上海"), ("新华社", "located-in", "北京")]
    assert zh("上海是李鹏的故乡。") == []


def test_parse_triples_of_model_answers():
    assert T.parse_triples('[["snow", "is part of", "winter"]]') == [("snow", "is-part-of", "winter")]
    assert T.parse_triples('Sure! [{"head": "gun", "relation": "is-a", "tail": "weapon"}] Done.') == [
        ("gun", "is-a", "weapon")]
    assert T.parse_triples('{"triples": [["a", "is-a", "b"]]}') == [("a", "is-a", "b")]
    assert T.parse_triples('["a", "is-a", "b"]') == [("a", "is-a", "b")]  # one bare triple
    assert T.parse_triples("[]") == []  # valid: no triples
    # valid JSON: the items that are not triples are dropped
    assert T.parse_triples('[["a", "is-a", "b"], ["c"], [1, 2, 3], ["", "is-a", "b"]]') == [("a", "is-a", "b")]
    assert T.parse_triples('[["a", "is-a"]]') == []
    for bad in ("", "no JSON here", '[["a", "is-a", "b"', '{"head": "a"}', '"a is-a b"', "{'a': 1}"):
        assert T.parse_triples(bad) is None, bad
    with pytest.raises(ValueError, match="string"):
        T.parse_triples(None)
    found, invalid = T.parsed(['[["a", "is-a", "b"]]', "oops", "[]", "[[1]"])
    assert found == [[("a", "is-a", "b")], [], [], []] and invalid == 0.5


def test_chat_prompt_and_shots():
    train = [Example("Gun is a kind of weapon.", (("gun", "is-a", "weapon"),), (), (), ()),
             Example("Snow is part of winter. Steel is cold.",
                     (("snow", "is-part-of", "winter"), ("cold", "is-property-of", "steel")), (), (), ()),
             *[Example(f"x{i}", ((f"h{i}", r, f"t{i}"),), (), (), ()) for i, r in enumerate(T.RELATIONS["en"])]]
    assert [e.text for e in T.shots(train, "en", "one-shot")] == ["Gun is a kind of weapon."]
    per_relation = T.shots(train, "en", "one-per-relation+pair")
    assert [e.triples[0][1] for e in per_relation[:4]] == list(T.RELATIONS["en"])
    assert len(per_relation[-1].triples) == 2
    messages = T.chat_prompt("Owl is a kind of bird.", T.shots(train, "en", "one-shot"), "en")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert json.loads(messages[2]["content"]) == [["gun", "is-a", "weapon"]]
    assert "is-opposite-of" in messages[0]["content"]
    with pytest.raises(ValueError, match="variant"):
        T.shots(train, "en", "ten-shot")


def test_read_commonsense(tmp_path):
    path = tmp_path / "commonsense.csv"
    path.write_text('\ufeff"snow","is-part-of","winter","nature",1\n"gun","is-a","weapon","culture",2\n',
                    encoding="utf-8")
    rows = T.read_commonsense(path)
    assert rows[0] == T.CommonsenseRow("snow", "is-part-of", "winter", "nature", 1) and rows[1].weight == 2
    assert T.english_triples(rows) == [("gun", "is-a", "weapon"), ("snow", "is-part-of", "winter")]
    path.write_text('"snow","is-part-of","winter"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: expected 5 columns"):
        T.read_commonsense(path)


def test_english_dataset_holds_out_triples_and_templates():
    data = T.build_dataset("en", sizes={"train": 300, "validation": 50, "test": 50})
    seen = {t for e in data["train"] for t in e.triples}
    assert not seen & {t for e in data["test"] for t in e.triples}
    train_texts = {t.text for t in T.templates("en", "train")}
    assert not train_texts & {t for e in data["test"] for t in e.templates}
    assert {t for e in data["test-seen"] for t in e.templates} <= train_texts  # the control: old wordings
    assert {t for e in data["test-seen"] for t in e.triples} <= set(T.split_triples("en")["test"])
    assert T.dataset_digest(data["test"]) == T.dataset_digest(
        T.build_dataset("en", sizes={"train": 300, "validation": 50, "test": 50})["test"])


def test_predictions_round_trip(tmp_path):
    found = [[("a", "is-a", "b")], []]
    T.write_predictions(tmp_path / "p.jsonl", found, raw=["[[\"a\",\"is-a\",\"b\"]]", "x"])
    rows = T.read_predictions(tmp_path / "p.jsonl")
    assert [r["triples"] for r in rows] == [[["a", "is-a", "b"]], []] and rows[1]["raw"] == "x"
    (tmp_path / "q.jsonl").write_text('{"id": 1, "triples": []}\n')
    with pytest.raises(ValueError, match="numbered"):
        T.read_predictions(tmp_path / "q.jsonl")


def test_shipped_results_rescore_to_their_numbers():
    results = T.shipped_results()  # checks every predictions file against its sha256
    assert results["key"] == T.KEY and len(results["seeds"]) == 3
    for language in T.LANGUAGES:
        live = T.rescore(results, language, T.build_dataset(language, sizes=results["sizes"]))
        for test_set in T.TEST_SETS:
            stored = results["languages"][language]["scores"][test_set]
            assert live[test_set]["pattern"] == stored["pattern"]
            assert live[test_set]["smollm2"] == stored["smollm2"]
            for key, summary in stored["tagger"].items():
                assert [live[test_set][f"tagger-seed-{s}"][key] for s in results["seeds"]] == summary["values"]
    assert T.headline(results).count("\n") == 2 * len(T.LANGUAGES) - 1
