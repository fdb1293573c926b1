"""Recipe rag: an assistant that retrieves from its knowledge base before it answers.

The knowledge base is every distinct answer of the ChatterBot corpus (English and Chinese: small
talk, trivia, questions about the bot) and, in English, the Python reference topics that ship
with Python, in passages. The questions and their labels come from the sources, not from any
retriever: a ChatterBot question is labelled with the answers the corpus pairs with it; "What
does the X statement do in Python?" with the passages of topic X. Questions outside the knowledge
base (the weather, train fares) should be declined.

Everything is chosen on the validation half of the questions and scored once on the test half:

- the retriever of each language (BM25, MiniLM vectors, or their reciprocal-rank fusion) by mean
  reciprocal rank;
- a refusal rule: when the best retrieval score is below a threshold, answer "I don't know"
  without calling the language model; the threshold that best separates answerable from
  out-of-scope validation questions;

then four assistants answer the test questions: SmolLM2-135M-Instruct alone, the top passage
returned as it is (a classic FAQ bot), SmolLM2 given the top `TOP` passages to cite with the
refusal rule, and the same without the rule. Scores: chrF against the gold answer, whether the
answer contains it, whether a cited passage is a gold one, and the refusal rates on answerable
and out-of-scope questions. ``python -m companion.recipes rag`` runs it on one thread.
"""

from __future__ import annotations

import json
import random
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from companion import retrieval as R

KEY = "rag"
TOP = 3
MAX_NEW_TOKENS = 64
REFUSAL = {"english": "I don't know.", "chinese": "我不知道。"}
INSTRUCTION = {
    "english": ("Answer the user's message using the numbered replies from our knowledge base below. "
                "Pick the one that fits, answer with it, and cite its number like [2]. If none fits, "
                "answer exactly: I don't know."),
    "chinese": ("请根据下面编号的知识库回复回答用户的消息。选出合适的一条，用它回答，并注明编号，如 [2]。"
                "如果都不合适，就只回答：我不知道。"),
}
PYTHON_QUESTION = "What does the {} statement do in Python?"
STATEMENTS = ("assert", "break", "class", "continue", "del", "for", "global", "if", "import", "nonlocal",
              "pass", "raise", "return", "try", "while", "with", "yield")  # each a pydoc topic
OUT_OF_SCOPE = {  # requests no passage of the knowledge base answers
    "english": ("What will the weather be like in {} tomorrow?", "How much is a train ticket to {}?"),
    "chinese": ("明天{}的天气怎么样？", "去{}的火车票多少钱？"),
}
CITIES = {"english": ("Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Oslo", "Dublin", "Lisbon",
                      "Warsaw"),
          "chinese": ("北京", "上海", "广州", "深圳", "成都", "杭州", "西安", "武汉", "南京", "重庆")}
RETRIEVERS = ("bm25", "dense", "hybrid")
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class Question:
    """A user's message: its language, the gold passages (none when out of scope), its split."""

    text: str
    language: str
    gold: frozenset[int] = field(default_factory=frozenset)
    split: str = "test"

    @property
    def answerable(self) -> bool:
        return bool(self.gold)


def _knowledge(language: str) -> tuple[list[R.Passage], list[tuple[str, set[int]]]]:
    """The knowledge base of `language` and ChatterBot's (question, gold pids), from one read."""
    faq, pairs = R.faq(language)
    if language != "english":
        return faq, pairs
    return faq + [R.Passage(len(faq) + p.pid, p.source, p.text) for p in R.python_topics()], pairs


def passages(language: str) -> list[R.Passage]:
    """The knowledge base of `language`: ChatterBot's answers, then (English) the Python topics."""
    return _knowledge(language)[0]


def questions(per_language: dict[str, int] | None = None, *, seed: int = 0) -> list[Question]:
    """A seeded sample of each language's ChatterBot questions, the Python questions (English) and
    the out-of-scope requests, each group shuffled and split in half: validation, then test."""
    per_language = per_language or {"english": 120, "chinese": 120}
    rng, out = random.Random(seed), []
    for language, n in per_language.items():
        kb, pairs = _knowledge(language)
        groups = [[Question(q, language, frozenset(g)) for q, g in rng.sample(pairs, min(n, len(pairs)))]]
        if language == "english":
            groups.append([Question(PYTHON_QUESTION.format(s), language,
                                    frozenset(p.pid for p in kb if p.source == f"python:{s}")) for s in STATEMENTS])
        groups.append([Question(t.format(c), language) for t in OUT_OF_SCOPE[language] for c in CITIES[language]])
        for group in groups:
            rng.shuffle(group)
            half = len(group) // 2
            out += [Question(q.text, q.language, q.gold, "validation") for q in group[:half]]
            out += [Question(q.text, q.language, q.gold, "test") for q in group[half:]]
    return out


# ----------------------------------------------------------------------------- answers

def normalise(text: str) -> str:
    """Lower case, NFKC (full-width to half-width), punctuation and spacing removed: for containment."""
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[\W_]+", "", text)


def refused(answer: str) -> bool:
    """Whether an answer declines ("I don't know", "我不知道", and their usual variants)."""
    n = normalise(answer)
    return any(x in n for x in ("idontknow", "idonotknow", "我不知道", "不知道"))


def citations(answer: str) -> list[int]:
    """The passage numbers an answer cites as [n] (1-based, as shown to the model), in order."""
    return [int(n) for n in re.findall(r"\[(\d+)\]", answer)]


def contains(answer: str, gold: str) -> bool:
    """Whether the answer contains the gold text, compared after `normalise`."""
    g = normalise(gold)
    return bool(g) and g in normalise(answer)


def rag_messages(question: str, passages: Sequence[str], language: str) -> list[dict]:
    """The chat messages of a retrieval-augmented request: instruction, numbered passages, message."""
    numbered = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
    user = "User" if language == "english" else "用户"
    return [{"role": "user", "content": f"{INSTRUCTION[language]}\n\n{numbered}\n\n{user}: {question}"}]


def answer_scores(answer: str, question: Question, kb: Sequence[R.Passage],
                  shown: Sequence[int] = ()) -> dict[str, float]:
    """chrF and containment against the gold answer(s) (best gold), refusal, and citation accuracy
    (a cited number among `shown` points to a gold passage; 0 when nothing valid is cited)."""
    from companion.instruct import chrf

    cited = [shown[n - 1] for n in citations(answer) if 1 <= n <= len(shown)]
    row = {"refused": float(refused(answer))}
    if question.answerable:
        golds = [kb[pid].text for pid in sorted(question.gold)]
        row["chrf"] = max(chrf(answer, g) for g in golds)
        row["contains"] = float(any(contains(answer, g) for g in golds))
        if shown:
            row["cites_gold"] = float(any(pid in question.gold for pid in cited))
    return row


# ----------------------------------------------------------------------------- retrieval

@dataclass
class KnowledgeBase:
    """One language's passages with both indexes (BM25 and MiniLM vectors)."""

    language: str
    passages: list[R.Passage]
    bm25: R.BM25Index
    dense: R.DenseIndex

    def scores(self, texts: Sequence[str], retriever: str, encoder, tokenizer) -> np.ndarray:
        """A (questions x passages) score matrix; for hybrid, reciprocal-rank-fusion scores."""
        if retriever == "bm25":
            return np.stack([self.bm25.scores(t) for t in texts])
        dense = self.dense.scores(R.embed(list(texts), encoder, tokenizer))
        if retriever == "dense":
            return dense
        if retriever != "hybrid":
            raise ValueError(f"retriever must be one of {RETRIEVERS}, got {retriever!r}")
        sparse = np.stack([self.bm25.scores(t) for t in texts])
        n = len(self.passages)
        fused = [R.fusion_scores([R.top_k(s, n), R.top_k(d, n)]) for s, d in zip(sparse, dense)]
        return np.array([[f[pid] for pid in range(n)] for f in fused])


def knowledge_base(language: str, encoder, tokenizer) -> KnowledgeBase:
    """The knowledge base of `language` (see `passages`), indexed both ways."""
    kb = passages(language)
    vectors = R.embed([p.text for p in kb], encoder, tokenizer)
    return KnowledgeBase(language, kb, R.BM25Index(kb, language), R.DenseIndex(vectors))


def ranking_metrics(scores: np.ndarray, gold: Sequence[frozenset[int]]) -> dict[str, float]:
    """recall@1, recall@3 and MRR of a score matrix against gold sets (answerable questions only)."""
    rankings = [R.top_k(row, 10) for row in scores]
    return {"recall@1": R.recall_at_k(rankings, gold, 1), "recall@3": R.recall_at_k(rankings, gold, 3),
            "mrr": R.mean_reciprocal_rank(rankings, gold)}


def best_threshold(top_scores: Sequence[float], answerable: Sequence[bool]) -> tuple[float, float]:
    """The threshold on the best retrieval score that best separates answerable questions (score >=
    threshold) from the others, and its accuracy; candidates are midpoints between observed scores."""
    values = np.sort(np.unique(top_scores))
    candidates = np.concatenate([[values[0] - 1], (values[:-1] + values[1:]) / 2, [values[-1] + 1]])
    s, a = np.asarray(top_scores), np.asarray(answerable)
    accuracy = [float(np.mean((s >= t) == a)) for t in candidates]
    best = int(np.argmax(accuracy))
    return float(candidates[best]), accuracy[best]


# ----------------------------------------------------------------------------- the recipe

def _standard_error(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def system_scores(answers: Sequence[str], asked: Sequence[Question], kb: Sequence[R.Passage],
                  shown: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
    """One assistant's scores: mean chrF (with its standard error) and containment over the
    answerable questions, refusal rates on answerable and out-of-scope ones, and, for an assistant
    that was shown passages (`shown`, the pids of each prompt's [1], [2], ...), how often it cites a
    gold one."""
    scored = [answer_scores(a, q, kb, s) for a, q, s in zip(answers, asked, shown or [()] * len(asked))]
    inside = [r for r, q in zip(scored, asked) if q.answerable]
    outside = [r for r, q in zip(scored, asked) if not q.answerable]
    return {
        "chrf": float(np.mean([r["chrf"] for r in inside])),
        "chrf_standard_error": _standard_error([r["chrf"] for r in inside]),
        "contains": float(np.mean([r["contains"] for r in inside])),
        "refused_answerable": float(np.mean([r["refused"] for r in inside])),
        "refused_out_of_scope": float(np.mean([r["refused"] for r in outside])),
        **({"cites_gold": float(np.mean([r["cites_gold"] for r in inside]))} if shown is not None else {}),
    }


def run_recipe(out: Path, *, per_language: dict[str, int] | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
               progress: bool = True) -> dict:
    """Choose retriever and threshold on validation, answer the test questions four ways, score."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from companion.instruct import generate_answers
    from companion.provenance import environment
    from companion.resources import sha256

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder, enc_tok = R.load_encoder()
    asked = questions(per_language)
    results: dict = {"key": KEY, "top": TOP, "max_new_tokens": max_new_tokens, "languages": {},
                     "questions": len(asked)}
    rows = []
    smol_tok = AutoTokenizer.from_pretrained(SMOLLM2)
    smol = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32)
    for language in dict.fromkeys(q.language for q in asked):
        kb = knowledge_base(language, encoder, enc_tok)
        mine = [q for q in asked if q.language == language]
        val = [q for q in mine if q.split == "validation"]
        test = [q for q in mine if q.split == "test"]
        retrieval = {}
        for name in RETRIEVERS:
            ok = [q for q in val if q.answerable]
            retrieval[name] = ranking_metrics(kb.scores([q.text for q in ok], name, encoder, enc_tok),
                                              [q.gold for q in ok])
        chosen = max(RETRIEVERS, key=lambda n: retrieval[n]["mrr"])  # first best on validation
        val_scores = kb.scores([q.text for q in val], chosen, encoder, enc_tok)
        threshold, val_accuracy = best_threshold(val_scores.max(1), [q.answerable for q in val])
        test_scores = kb.scores([q.text for q in test], chosen, encoder, enc_tok)
        ok = [i for i, q in enumerate(test) if q.answerable]
        test_retrieval = ranking_metrics(test_scores[ok], [test[i].gold for i in ok])
        shown = [R.top_k(row, TOP) for row in test_scores]
        keep = test_scores.max(1) >= threshold
        prompts = {
            "model alone": [[{"role": "user", "content": q.text}] for q in test],
            "rag": [rag_messages(q.text, [kb.passages[p].text for p in s], language) for q, s in zip(test, shown)],
        }
        generated = {name: generate_answers(smol, smol_tok, msgs, max_new_tokens=max_new_tokens, progress=progress)
                     for name, msgs in prompts.items()}
        answers = {
            "model alone": generated["model alone"],
            "top passage": [kb.passages[s[0]].text if k else REFUSAL[language] for s, k in zip(shown, keep)],
            "rag + refusal rule": [a if k else REFUSAL[language] for a, k in zip(generated["rag"], keep)],
            "rag": generated["rag"],
        }
        systems = {}
        for name, texts in answers.items():
            used = name.startswith("rag")
            systems[name] = system_scores(texts, test, kb.passages, shown if used else None)
            rows += [{"language": language, "system": name, "question": q.text, "answerable": q.answerable,
                      "shown": s if used else [], "answer": a} for a, q, s in zip(texts, test, shown)]
        results["languages"][language] = {
            "passages": len(kb.passages), "validation": len(val), "test": len(test),
            "test_answerable": len(ok), "retrieval_validation": retrieval, "retriever": chosen,
            "threshold": threshold, "threshold_validation_accuracy": val_accuracy,
            "retrieval_test": test_retrieval, "systems": systems,
        }
        print(f"{language}: retriever {chosen}, threshold {threshold:.4f}; "
              + "; ".join(f"{n} chrF {s['chrf']:.1f}" for n, s in systems.items()))
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    results.update(wall_seconds=round(time.perf_counter() - start, 1),
                   artifacts={"answers.jsonl": sha256(out / "answers.jsonl")}, **environment())
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def headline(results: dict) -> str:
    """One line per language: the retriever chosen, its test recall@1, and each assistant's chrF."""
    return "\n".join(
        f"{language}: {r['retriever']} retrieval (test recall@1 {r['retrieval_test']['recall@1']:.3f}); chrF "
        + ", ".join(f"{name} {s['chrf']:.1f}" for name, s in r["systems"].items())
        for language, r in results["languages"].items())


def shipped_results(folder: Path | None = None) -> dict:
    """The recipe's results.json (default: the shipped copy), its answers checked by sha256."""
    from companion.provenance import verified_results
    from companion.recipes import RESULTS

    return verified_results(Path(folder) if folder is not None else RESULTS / KEY, KEY)


def shipped_answers(folder: Path | None = None) -> list[dict]:
    """The rows of the recipe's answers.jsonl (default: the shipped copy), checked by sha256 first:
    language, system, question, answerable, shown (pids of the passages in the prompt), answer."""
    from companion.recipes import RESULTS

    folder = Path(folder) if folder is not None else RESULTS / KEY
    shipped_results(folder)
    lines = (folder / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# ----------------------------------------------------------------------------- the assistant

@dataclass
class Assistant:
    """The recipe's assistant, for one message at a time: per language, the knowledge base, the
    retriever and refusal threshold chosen on validation; MiniLM for queries, SmolLM2 to answer."""

    knowledge: dict[str, KnowledgeBase]
    retriever: dict[str, str]
    threshold: dict[str, float]
    encoder: object
    encoder_tokenizer: object
    model: object
    tokenizer: object
    max_new_tokens: int = MAX_NEW_TOKENS

    def retrieve(self, question: str, language: str, k: int = TOP) -> list[tuple[int, float]]:
        """(pid, score) of the `k` best passages for `question`, best first."""
        kb = self.knowledge[language]
        scores = kb.scores([question], self.retriever[language], self.encoder, self.encoder_tokenizer)[0]
        return [(pid, float(scores[pid])) for pid in R.top_k(scores, k)]

    def answer(self, question: str, language: str) -> dict:
        """The answer to one message: when the best score is below the threshold, the refusal
        without calling SmolLM2; otherwise SmolLM2's greedy answer to the passages. Returns
        answer, refused, passages (pid, source, text, score of those shown), cited (their pids),
        ruled_out (whether the threshold declined it)."""
        if language not in self.knowledge:
            raise ValueError(f"language must be one of {sorted(self.knowledge)}, got {language!r}")
        kb, found = self.knowledge[language], self.retrieve(question, language)
        shown = [{"pid": pid, "source": kb.passages[pid].source, "text": kb.passages[pid].text,
                  "score": score} for pid, score in found]
        if found[0][1] < self.threshold[language]:
            return {"answer": REFUSAL[language], "refused": True, "passages": shown, "cited": [],
                    "ruled_out": True}
        from companion.instruct import generate_answers

        messages = rag_messages(question, [p["text"] for p in shown], language)
        text = generate_answers(self.model, self.tokenizer, [messages], max_new_tokens=self.max_new_tokens)[0]
        cited = [found[n - 1][0] for n in citations(text) if 1 <= n <= len(found)]
        return {"answer": text, "refused": refused(text), "passages": shown, "cited": cited,
                "ruled_out": False}


def load_assistant(results: dict | None = None, *, languages: Sequence[str] = R.LANGUAGES,
                   knowledge: dict[str, KnowledgeBase] | None = None,
                   max_new_tokens: int | None = None) -> Assistant:
    """The assistant the recipe chose (`results`: default the shipped results.json), with MiniLM and
    SmolLM2-135M-Instruct loaded once; `knowledge` replaces the full knowledge bases (indexing the
    English one embeds 1,600 passages, about a minute on one core)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = results if results is not None else shipped_results()
    chosen = {language: results["languages"][language] for language in languages}
    encoder, encoder_tokenizer = R.load_encoder()
    if knowledge is None:
        knowledge = {language: knowledge_base(language, encoder, encoder_tokenizer) for language in chosen}
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval()
    return Assistant(knowledge, {k: r["retriever"] for k, r in chosen.items()},
                     {k: r["threshold"] for k, r in chosen.items()}, encoder, encoder_tokenizer, model,
                     tokenizer, max_new_tokens if max_new_tokens is not None else results["max_new_tokens"])
