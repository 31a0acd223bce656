"""What a new `fairseq-slt results --json` says that the committed one did not, in one line: the driver's
commit message (the stage that called publish may have been finished long before, e.g. on a restart).
   python results_change.py OLD_JSON NEW_JSON        (OLD_JSON '-' reads stdin; empty: no earlier results)"""
import json
import sys

from fairseq_slt.cli.report import run_namer  # runs named as table.md names them


def change(old: dict, new: dict) -> str:
    name = run_namer([r["run"] for r in old.get("rows", []) + new["rows"]
                      + old.get("unfinished", []) + new["unfinished"]])

    old_rows = {r["run"]: r for r in old.get("rows", [])}
    old_unfinished = {u["run"]: u["why"] for u in old.get("unfinished", [])}
    parts = []
    for row in new["rows"]:
        bleu = (row.get("score") or {}).get("bleu")
        score = f" ({bleu:.2f} BLEU)" if bleu is not None else " (not scored)"
        before = old_rows.get(row["run"])
        if before is None:
            parts.append(f"{name(row['run'])} in{score}")
        elif (before.get("score") or {}).get("bleu") != bleu:
            parts.append(f"{name(row['run'])} scored again{score}")
    for item in new.get("unfinished", []):
        if old_unfinished.get(item["run"]) != item["why"] and item["run"] not in old_rows:
            parts.append(f"{name(item['run'])} unfinished ({item['why']})")
    if old.get("second_seeds", {}).get("cells") != new.get("second_seeds", {}).get("cells"):
        parts.append("second seeds wanted: " + (", ".join(
            f"{c['label']} {c['sparsity'] * 100:g} %" for c in new.get("second_seeds", {}).get("cells", [])) or "none"))
    if len(parts) > 5:  # a first table: a commit subject, not the table again
        parts = parts[:3] + [f"{len(parts) - 3} more changes"]
    return "; ".join(parts) or "no run changed"


if __name__ == "__main__":
    with (sys.stdin if sys.argv[1] == "-" else open(sys.argv[1])) as handle:
        text = handle.read()
    with open(sys.argv[2]) as handle:
        print(change(json.loads(text) if text.strip() else {}, json.load(handle)))
