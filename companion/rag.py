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


def passages(language: str) -> list[R.Passage]:
    """The knowledge base of `language`: ChatterBot's answers, then (English) the Python topics."""
    faq, _ = R.faq(language)
    if language != "english":
        return faq
    return faq + [R.Passage(len(faq) + p.pid, p.source, p.text) for p in R.python_topics()]


def questions(per_language: dict[str, int] | None = None, *, seed: int = 0) -> list[Question]:
    """A seeded sample of each language's ChatterBot questions, the Python questions (English) and
    the out-of-scope requests, each group shuffled and split in half: validation, then test."""
    per_language = per_language or {"english": 120, "chinese": 60}
    rng, out = random.Random(seed), []
    for language, n in per_language.items():
        kb, (_, pairs) = passages(language), R.faq(language)
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
        return _rrf_scores(sparse) + _rrf_scores(dense)


def _rrf_scores(scores: np.ndarray, k: int = 60) -> np.ndarray:
    """Each passage's 1 / (k + rank) in each row (rank 1 = best): reciprocal-rank fusion's terms."""
    ranks = np.empty_like(scores, dtype=np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, scores.shape[1] + 1)
    return 1.0 / (k + ranks)


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
    smol_tok = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    smol = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", dtype=torch.float32)
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
            scored = [answer_scores(a, q, kb.passages, s if used else ()) for a, q, s in zip(texts, test, shown)]
            inside = [r for r, q in zip(scored, test) if q.answerable]
            outside = [r for r, q in zip(scored, test) if not q.answerable]
            systems[name] = {
                "chrf": float(np.mean([r["chrf"] for r in inside])),
                "chrf_standard_error": _standard_error([r["chrf"] for r in inside]),
                "contains": float(np.mean([r["contains"] for r in inside])),
                "refused_answerable": float(np.mean([r["refused"] for r in inside])),
                "refused_out_of_scope": float(np.mean([r["refused"] for r in outside])),
                **({"cites_gold": float(np.mean([r["cites_gold"] for r in inside]))} if used else {}),
            }
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


def shipped_results(folder: Path | None = None) -> dict:
    """The recipe's results.json (default: the shipped copy), its answers checked by sha256."""
    from companion.provenance import verified_results
    from companion.recipes import RESULTS

    return verified_results(Path(folder) if folder is not None else RESULTS / KEY, KEY)
