"""Write the checkpoint entries of companion/resources.py from companion/checkpoints/*/recipe.json and the files' sha256 (run after python -m companion.recipes KEY --replace-shipped)."""
import json, sys
from pathlib import Path
sys.path.insert(0, ".")
from companion.resources import sha256
TITLES = {
 "book-gpt": ("The book's byte-level GPT (4 layers x 128, 0.84M parameters), pre-trained on the movie reviews",
              "GPT2LMHeadModel + byte-level tokenizer (id = byte value, <|endoftext|> = 256): the GPT chapter's recipe run for {steps:,} steps."),
 "book-bert": ("The book's character-level BERT (4 layers x 128, 0.83M parameters), pre-trained with MLM on the movie reviews",
               "BertForMaskedLM + character tokenizer (<pad> <unk> <cls> <sep> <mask>, then the characters of the training reviews): the BERT chapter's recipe run for {steps:,} steps."),
}
blocks = []
for key in ["book-gpt", "book-bert"]:
    folder = Path("companion/checkpoints") / key
    if not folder.exists():
        continue
    rec = json.loads((folder / "recipe.json").read_text())
    files = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    title, notes = TITLES[key]
    fig = {k: rec[k] for k in ("steps", "tokens", "train_seconds", "device", "final_validation_loss", "validation_loss_unit", "parameters", "date")}
    lines = ['        Resource(', f'            key="{key}",', f'            title="{title}",', '            kind="checkpoint",', '            pip="",',
             '            files={']
    lines += [f'                "{n}": "{h}",' for n, h in files.items()]
    lines += ['            },',
              '            licence=("Weights and tokenizer made by the book (python -m companion.recipes); trained on the "',
              '                     "Pang & Lee movie reviews, which are for personal/research use."),',
              f'            notes="{notes.format(**rec)}",',
              f'            recipe={json.dumps(fig, ensure_ascii=False)},',
              '        ),']
    blocks.append("\n".join(lines))
p = Path("companion/resources.py"); s = p.read_text()
start, end = "        # --- checkpoints: written by tools/register_checkpoints.py from each recipe.json ---\n", "        # --- end of checkpoints ---\n"
if start in s:
    s = s[:s.index(start)] + s[s.index(end) + len(end):]
anchor = '        Resource(\n            key="cjk-font",'
s = s.replace(anchor, start + "\n".join(blocks) + "\n" + end + anchor)
p.write_text(s)
print("\n".join(blocks))
