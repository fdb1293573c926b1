"""Speculative decoding against plain greedy decoding, side by side, on SmolLM2-135M-Instruct.

For each draft (the target's first n layers, `companion.speculative.layer_draft`; with
`--lookup` the model-free `companion.speculative.PromptLookup`; with `--distilled` the 2-layer
draft the `draft` recipe distilled from SmolLM2, `companion.draft_recipe.load_draft`) and each
k, the same prompts are decoded greedily three ways, alternating which goes first: `generate`
without a draft, `companion.speculative.speculative_generate`, and transformers' assisted
generation with the same draft (`assistant_model=`, or `prompt_lookup_num_tokens=` for the lookup draft). Prints the
acceptance rate, the tokens per target pass and the wall-clock speed-up of each over plain
`generate` (the outputs are checked to be identical).

    .venv/bin/python bench/speculative.py                      # drafts of 6 and 12 layers, k = 2, 4
    .venv/bin/python bench/speculative.py --layers 10 --k 3 --tokens 96 --threads 1
    .venv/bin/python bench/speculative.py --task copy --layers --lookup --k 4 8   # prompt lookup
    .venv/bin/python bench/speculative.py --layers --distilled --k 1 2 3 4      # the distilled draft
"""

from __future__ import annotations

import argparse
import time

import torch

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a refrigerator keeps food cold.",
    "What are three tips for learning a new language?",
    "Describe the water cycle in simple terms.",
]

# Copy-heavy tasks: the answer repeats much of the prompt (what prompt lookup is for).
COPY_PROMPTS = [
    "Correct the spelling mistakes in this text and write it out again:\n\nTeh library opens at "
    "nine in the morning and closes at six in the evening. Visitors can borow up to five books at a "
    "time and must return them within two weeks. The reading room on the secnd floor is quiet.",
    "Repeat this passage with every 'cat' changed to 'dog':\n\nThe cat sat by the window all "
    "morning. When the cat got hungry, it walked to the kitchen, and the cat waited by its bowl "
    "until somebody fed it.",
    "Here is a product description:\n\nThe Aurora desk lamp has three brightness levels, a "
    "flexible neck, a USB charging port in its base and a warm white LED that lasts 25,000 hours."
    "\n\nWhich features does the Aurora desk lamp have? Answer using the description's words.",
    "Rewrite this list as one sentence: apples, two loaves of bread, a bottle of olive oil, "
    "a bag of rice, fresh basil and six eggs.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="*", default=[6, 12], help="draft depths (of 30)")
    parser.add_argument("--lookup", action="store_true", help="also the prompt-lookup draft")
    parser.add_argument("--distilled", action="store_true",
                        help="also the shipped distilled draft (python -m companion.recipes draft)")
    parser.add_argument("--task", choices=["chat", "copy"], default="chat",
                        help="open chat prompts, or copy-heavy ones")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4], help="tokens drafted per round")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import companion  # noqa: F401  (first: it points Hugging Face at the book's offline cache)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from companion.speculative import PromptLookup, layer_draft, speculative_generate

    name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name).eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)["input_ids"]
               for p in (PROMPTS if args.task == "chat" else COPY_PROMPTS)]
    eos = tok.eos_token_id

    def plain(ids):
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,
                              do_sample=False, eos_token_id=eos, pad_token_id=eos)

    print(f"SmolLM2-135M-Instruct (30 layers), {len(prompts)} {args.task} prompts x {args.tokens} new "
          f"tokens at most, {args.threads} threads")
    print(f"{'draft':>6} {'k':>2} {'accepted':>8} {'tok/pass':>8} {'ours':>6} {'assisted':>8}")
    drafts = [(str(n), layer_draft(model, n)) for n in args.layers]
    if args.lookup:
        drafts.append(("lookup", PromptLookup()))
    if args.distilled:
        from companion.draft_recipe import KEY, load_draft
        from companion.recipes import RESULTS, shipped_results

        shipped_results(KEY)  # checks the draft's sha256
        drafts.append(("distil", load_draft(model, RESULTS / KEY / "draft-seed-0.safetensors")))
    for n, draft in drafts:
        lookup = isinstance(draft, PromptLookup)
        for k in args.k:
            times = {"plain": 0.0, "ours": 0.0, "assisted": 0.0}
            drafted = accepted = calls = new = 0
            for i, ids in enumerate(prompts):
                order = ["plain", "ours", "assisted"][i % 3:] + ["plain", "ours", "assisted"][: i % 3]
                outs = {}
                for way in order:
                    start = time.perf_counter()
                    with torch.no_grad():
                        if way == "plain":
                            outs[way] = plain(ids)
                        elif way == "ours":
                            outs[way], stats = speculative_generate(model, draft, ids, args.tokens, k=k,
                                                                    eos_token_id=eos)
                        else:
                            model.generation_config.num_assistant_tokens = k
                            model.generation_config.num_assistant_tokens_schedule = "constant"
                            how = {"prompt_lookup_num_tokens": k} if lookup else {"assistant_model": draft}
                            outs[way] = model.generate(ids, attention_mask=torch.ones_like(ids),
                                                       max_new_tokens=args.tokens, do_sample=False,
                                                       eos_token_id=eos, pad_token_id=eos, **how)
                    times[way] += time.perf_counter() - start
                if not outs["plain"].tolist() == outs["ours"].tolist() == outs["assisted"].tolist():
                    raise SystemExit(f"outputs differ on prompt {i}: speculative decoding must not change them")
                drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
                calls, new = calls + stats.target_calls, new + stats.new_tokens
            print(f"{n:>6} {k:>2} {accepted / max(drafted, 1):>8.2f} {new / calls:>8.2f} "
                  f"{times['plain'] / times['ours']:>5.2f}x {times['plain'] / times['assisted']:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
