"""The paper's four claims, judged from ``fairseq-slt results`` rows (no verdict is written by hand).

A cell is (method label, target sparsity); its runs (seeds) give a mean and a range. The noise is the
largest range of any cell with two or more seeds (the dense seeds first of all). Each comparison
"A - B >= margin" at a sparsity is "holds" when it is met by more than the noise, "fails" when it is
missed by more than the noise, "within noise" otherwise; a claim takes its worst level (fails, then
within noise), and is "not run" while no sparsity has both of its cells.

Second seeds (``second_seeds``): a claim cell with one run gets a second seed when the gap that decides its
comparison (A - B - margin) is under twice the dense seeds' range, and the sign control's two cells always.
"""
import statistics
from typing import Dict, List, Optional, Tuple

Cell = Tuple[str, float]

# name, the claim in words, A, B, margin, which sparsities
CLAIMS = [
    ("a", "SLT is within 1 BLEU of MP up to 80 %", "slt", "mp", -1.0, lambda s: s <= 0.8),
    ("b", "SLT-MP is at least MP from 90 %", "slt-mp", "mp", 0.0, lambda s: s >= 0.9),
    ("c", "CLT with true signs is above CLT with random signs", "clt", "clt (random signs)", 0.0, None),
    ("d", "MP masks give winning tickets: MP-SLT is at least SLT at the same sparsity", "mp-slt", "slt", 0.0, None),
]


def cells(rows: List[dict]) -> Dict[Cell, dict]:
    """(label, sparsity) -> mean, min, max, n and seeds of the scored rows' BLEU."""
    grouped: Dict[Cell, List[dict]] = {}
    for row in rows:
        if row.get("score"):
            grouped.setdefault((row["label"], row["target_sparsity"]), []).append(row)
    result = {}
    for key, group in grouped.items():
        scores = [r["score"]["bleu"] for r in group]
        result[key] = {"label": key[0], "sparsity": key[1], "mean": round(statistics.mean(scores), 2),
                       "min": min(scores), "max": max(scores), "n": len(scores),
                       "seeds": sorted(r.get("seed") for r in group if r.get("seed") is not None)}
    return result


def noise(table: Dict[Cell, dict]) -> Optional[float]:
    """The largest seed range of any cell with 2+ runs (None: no cell has been seeded twice)."""
    ranges = [c["max"] - c["min"] for c in table.values() if c["n"] >= 2]
    return round(max(ranges), 2) if ranges else None


def judge(rows: List[dict]) -> dict:
    table = cells(rows)
    spread = noise(table)
    verdicts = []
    for name, text, a, b, margin, levels in CLAIMS:
        both = sorted({s for (label, s) in table if label == a and (b, s) in table and (levels is None or levels(s))})
        comparisons = []
        for s in both:
            left, right = table[(a, s)]["mean"], table[(b, s)]["mean"]
            gap = round(left - right - margin, 2)
            verdict = "within noise" if spread is not None and abs(gap) <= spread else "holds" if gap >= 0 else "fails"
            comparisons.append({"sparsity": s, "verdict": verdict, a: left, b: right, "difference": round(left - right, 2)})
        verdicts.append({"claim": name, "text": text, "verdict": _overall(comparisons), "comparisons": comparisons})
    return {"noise": spread, "claims": verdicts, "second_seeds": second_seeds(table, verdicts)}


def second_seeds(table: Dict[Cell, dict], verdicts: List[dict]) -> dict:
    """The cells that want a second seed: {"spread": the dense seeds' range (None: one dense seed so far, and
    no cell is chosen), "cells": [{"label", "sparsity", "why"}], one seed each so far, in the claims' order}."""
    dense = next((c for (label, _), c in table.items() if label == "dense"), None)
    spread = round(dense["max"] - dense["min"], 2) if dense and dense["n"] >= 2 else None
    wanted: Dict[Cell, str] = {}
    if spread is not None:
        for (name, _, a, b, margin, _), claim in zip(CLAIMS, verdicts):
            for comparison in claim["comparisons"]:
                s, gap = comparison["sparsity"], round(comparison["difference"] - margin, 2)
                if name == "c" or abs(gap) < 2 * spread:
                    why = "the sign control" if name == "c" else \
                        f"claim ({name}) at {s * 100:g} %: gap {gap:+.2f} under twice the dense spread"
                    for cell in ((a, s), (b, s)):
                        if table[cell]["n"] < 2:
                            wanted.setdefault(cell, why)
    return {"spread": spread, "cells": [{"label": label, "sparsity": s, "why": why}
                                        for (label, s), why in wanted.items()]}


def _overall(comparisons: List[dict]) -> str:
    run = [c["verdict"] for c in comparisons if c["verdict"] != "not run"]
    if not run:
        return "not run"
    for verdict in ("fails", "within noise"):
        if verdict in run:
            return verdict
    return "holds"


def notes(judged: dict) -> List[str]:
    """The verdicts as Markdown lines under the table."""
    spread = judged["noise"]
    lines = ["", "Claims (computed by `fairseq-slt results` from the rows; noise = "
             + (f"the largest seed range of a cell, {spread:.2f} BLEU" if spread is not None
                else "not measured: no cell has two seeds yet") + "):"]
    for claim in judged["claims"]:
        figures = "; ".join(_figure(c) for c in claim["comparisons"]) or "no cell run"
        lines.append(f"- ({claim['claim']}) {claim['text']}: **{claim['verdict']}** ({figures})")
    seeds = judged["second_seeds"]
    if seeds["spread"] is None:
        lines.append("- Second seeds: not chosen yet (the dense cell has one seed)")
    else:
        cells = ", ".join(f"{c['label']} {c['sparsity'] * 100:g} % ({c['why']})" for c in seeds["cells"])
        lines.append(f"- Second seeds wanted (a claim's gap under twice the dense seeds' range, "
                     f"{2 * seeds['spread']:.2f} BLEU, and the sign control): {cells or 'none'}")
    return lines


def _figure(comparison: dict) -> str:
    names = [k for k in comparison if k not in ("sparsity", "verdict", "difference")]
    values = ", ".join(f"{k} {comparison[k]:.1f}" for k in names)
    return f"{comparison['sparsity'] * 100:g} %: {values}: {comparison['verdict']}"
