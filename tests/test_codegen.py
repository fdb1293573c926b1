"""companion.codegen: prompts, stop sequences, code extraction, batched generation, the recipe on a subset."""

from __future__ import annotations

import json

import pytest

from companion import codeeval, codegen


def test_truncate_cuts_at_the_first_stop_sequence():
    body = "    return x + 1\n"
    assert codegen.truncate(body + "\n\ndef other():\n    pass") == body + "\n"
    assert codegen.truncate(body + "\nprint(f(1))\n# done") == body
    assert codegen.truncate(body + "\nif __name__ == '__main__':\n    f(1)") == body
    assert codegen.truncate(body) == body  # nothing to cut
    assert codegen.truncate("    if x:\n        return 1\n") == "    if x:\n        return 1\n"  # indented stays


def test_code_of_reply_takes_the_fenced_block_and_replaces_a_redefined_stub():
    problem = codeeval.load_humaneval()[2]  # truncate_number
    whole = "Here it is:\n```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n```\nDone."
    code = codegen.code_of_reply(whole)
    assert code == "\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n"
    assert codeeval.run_sandboxed(codeeval.check_program(problem, code)).passed
    # a body without a def is appended as the body; an unclosed fence still gives its code
    assert codegen.code_of_reply("    return number % 1.0") == "    return number % 1.0"
    assert codegen.code_of_reply("```python\n    return number % 1.0") == "    return number % 1.0"
    # a prefilled reply: the code, then the closing fence
    assert codegen.code_of_reply("    return number % 1.0\n```") == "    return number % 1.0\n"
    assert codeeval.run_sandboxed(codeeval.check_program(problem, "    return number % 1.0\n")).passed


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(codegen.SMOL)
    return AutoModelForCausalLM.from_pretrained(codegen.SMOL).eval(), tokenizer


def test_batched_greedy_generation_equals_one_by_one(smol):
    model, tokenizer = smol
    problems = codeeval.load_humaneval()[:3]
    prompts = [codegen.chat_prompt(tokenizer, p) for p in problems]
    assert all(p.endswith(codegen.PREFILL) for p in prompts)
    side = tokenizer.padding_side
    batched = codegen.generate(model, tokenizer, prompts, max_new_tokens=12, stops=())
    alone = [codegen.generate(model, tokenizer, [p], max_new_tokens=12, stops=())[0] for p in prompts]
    assert batched == alone
    assert tokenizer.padding_side == side  # left padding only while generating
    with pytest.raises(ValueError, match="n must be 1 for greedy"):
        codegen.generate(model, tokenizer, prompts, n=2)


def test_sampling_is_seeded(smol):
    model, tokenizer = smol
    prompts = [codeeval.load_humaneval()[0]["prompt"]]
    first = codegen.generate(model, tokenizer, prompts, sample=True, n=2, seed=1, max_new_tokens=8)
    again = codegen.generate(model, tokenizer, prompts, sample=True, n=2, seed=1, max_new_tokens=8)
    assert first == again and len(first[0]) == 2


def test_the_recipe_writes_human_eval_samples_and_scores_them(tmp_path):
    results = codegen.run_recipe(tmp_path, subset=2, samples=2, max_new_tokens=16, sample_new_tokens=12,
                                 progress=False)
    assert results["problems"] == 2 and results["canonical_passed"] == 2
    samples = codegen.read_samples(tmp_path / "samples-chat-sampled.jsonl")
    assert list(samples) == ["HumanEval/0", "HumanEval/1"] and all(len(v) == 2 for v in samples.values())
    for run in results["runs"].values():
        assert set(run["pass_at"]) == {"1"}  # pass@10 needs at least 10 samples per problem
        assert all(s in codeeval.STATUSES for v in run["statuses"].values() for s in v)
    rows = [json.loads(x) for x in (tmp_path / "samples-completion.jsonl").read_text().splitlines()]
    assert [set(r) for r in rows] == [{"task_id", "completion"}] * 2
    assert codegen.shipped_results(tmp_path)["artifacts"].keys() == {
        "samples-completion.jsonl", "samples-chat.jsonl", "samples-chat-sampled.jsonl"}
    # re-scoring the written samples gives the recorded statuses
    problems = codeeval.load_humaneval()[:2]
    again = codegen.score_samples(problems, codegen.read_samples(tmp_path / "samples-chat.jsonl"))
    assert again["statuses"] == results["runs"]["chat"]["statuses"]
    assert [r["max_new_tokens"] for r in results["runs"].values()] == [16, 16, 12]
    # a rerun into the same folder resumes: every part is reused, nothing is generated again
    def refuse(*args, **kwargs):
        raise AssertionError("generated again")

    original, codegen.generate = codegen.generate, refuse
    try:
        again = codegen.run_recipe(tmp_path, subset=2, samples=2, max_new_tokens=16, sample_new_tokens=12,
                                   progress=False)
    finally:
        codegen.generate = original
    assert again["runs"] == results["runs"] and again["artifacts"] == results["artifacts"]
