"""Does a row re-run from its recorded command land within its cell's seeds' range?
   python rerun_check.py TABLE_JSON RERUN_JSON ORIGINAL_RUN OUT_MD
TABLE_JSON, RERUN_JSON: `fairseq-slt results --json` of the protocol and of the re-run's folder."""
import json
import sys

from fairseq_slt.checkpoints import Checkpoint, weights_digest
from fairseq_slt.cli import claims
from fairseq_slt.cli.report import run_namer, setup_of
from fairseq_slt.pruning import atomic_write_text

table_json, rerun_json, original, out = sys.argv[1:5]
table, rerun = (json.load(open(path)) for path in (table_json, rerun_json))
row = next(r for r in table["rows"] if r["run"] == original)
again = rerun["rows"][0]
cell = claims.cells(table["rows"])[(row["label"], row["target_sparsity"])]
low, high, bleu = cell["min"], cell["max"], again["score"]["bleu"]
outside = round(max(low - bleu, bleu - high, 0), 2)
same = weights_digest(Checkpoint(row["checkpoint"], "checkpoint", mmap=True)) == \
    weights_digest(Checkpoint(again["checkpoint"], "checkpoint", mmap=True))


name = run_namer([original, again["run"]])  # no machine's paths


lines = [f"# {row['label']} {row['target_sparsity'] * 100:g} %: a committed row re-run from its recorded command", "",
         f"- committed row: {name(original)}: BLEU {row['score']['bleu']:.2f}, trained on {setup_of(row.get('environment'))}",
         f"- re-run: {name(again['run'])}: BLEU {bleu:.2f} (chrF {again['score'].get('chrf')}), trained on {setup_of(again.get('environment'))}",
         f"- the cell's seeds: {cell['n']} run(s) {cell['seeds']}, BLEU {low:.2f}-{high:.2f}",
         f"- verdict: {'within the range' if not outside else f'outside the range by {outside:.2f} BLEU'}; "
         f"the re-run's weights are {'the same' if same else 'not the same'} bit for bit"]
atomic_write_text("\n".join(lines) + "\n", out)
print("\n".join(lines[2:]))
