"""The claims' verdicts from results rows: seeds' mean and range, the noise, holds / fails / within noise."""
from fairseq_slt.cli import claims, report


def row(label, sparsity, bleu, seed=1):
    return {"label": label, "target_sparsity": sparsity, "seed": seed, "score": {"bleu": bleu}}


def verdicts(rows):
    judged = claims.judge(rows)
    return {c["claim"]: c["verdict"] for c in judged["claims"]}, judged


def test_single_seeds_give_holds_or_fails_and_unrun_claims_say_so():
    rows = [row("dense", 0.0, 30.0), row("mp", 0.5, 29.0), row("slt", 0.5, 28.5), row("mp", 0.8, 27.0),
            row("slt", 0.8, 25.5), row("slt", 0.9, 20.0), row("mp", 0.9, 22.0)]
    found, judged = verdicts(rows)
    assert judged["noise"] is None
    assert found == {"a": "fails", "b": "not run", "c": "not run", "d": "not run"}  # 80 %: 1.5 below MP
    (claim_a, *_) = judged["claims"]
    assert [(c["sparsity"], c["verdict"], c["difference"]) for c in claim_a["comparisons"]] == [
        (0.5, "holds", -0.5), (0.8, "fails", -1.5)]  # 90 % is not part of claim (a)
    assert "(a) SLT is within 1 BLEU of MP up to 80 %: **fails** (50 %: slt 28.5, mp 29.0: holds; 80 %" in \
        "\n".join(claims.notes(judged))


def test_seeds_set_the_noise_and_close_differences_are_within_it():
    rows = [row("dense", 0.0, 30.0), row("dense", 0.0, 30.6, seed=2),  # noise 0.6
            row("slt-mp", 0.9, 25.0), row("slt-mp", 0.9, 25.4, seed=2), row("mp", 0.9, 25.0),  # +0.2: noise
            row("slt-mp", 0.95, 22.0), row("mp", 0.95, 20.0),  # +2.0: holds
            row("clt", 0.5, 29.0), row("clt (random signs)", 0.5, 27.0),
            row("mp-slt", 0.8, 24.0), row("slt", 0.8, 25.0)]  # -1.0: fails
    found, judged = verdicts(rows)
    assert judged["noise"] == 0.6
    assert found == {"a": "not run", "b": "within noise", "c": "holds", "d": "fails"}
    cell = claims.cells(rows)[("slt-mp", 0.9)]
    assert (cell["mean"], cell["min"], cell["max"], cell["n"], cell["seeds"]) == (25.2, 25.0, 25.4, 2, [1, 2])
    assert judged["claims"][1]["comparisons"][0]["difference"] == 0.2


def test_second_seeds_go_where_a_gap_is_under_twice_the_dense_spread_and_to_the_sign_control():
    rows = [row("dense", 0.0, 30.0), row("mp", 0.5, 29.0), row("slt", 0.5, 29.5),  # (a): gap +1.5
            row("mp", 0.8, 27.0), row("slt", 0.8, 25.55),  # (a): gap -0.45, between one and two spreads
            row("slt-mp", 0.9, 25.0), row("slt-mp", 0.9, 25.3, seed=2), row("mp", 0.9, 25.0),  # (b): 2 seeds, +0.15
            row("slt-mp", 0.95, 22.0), row("mp", 0.95, 20.0),  # (b): +2.0
            row("clt", 0.5, 29.0), row("clt (random signs)", 0.5, 27.0)]  # (c): 2.0, but the control always
    assert claims.judge(rows)["second_seeds"] == {"spread": None, "cells": []}  # one dense seed: no spread yet
    seeds = claims.judge(rows + [row("dense", 0.0, 30.3, seed=2)])["second_seeds"]
    assert seeds["spread"] == 0.3  # under 0.6: (a) 80 % (both cells), (b) 90 % (mp only: slt-mp has 2 seeds)
    assert [(c["label"], c["sparsity"]) for c in seeds["cells"]] == [
        ("slt", 0.8), ("mp", 0.8), ("mp", 0.9), ("clt", 0.5), ("clt (random signs)", 0.5)]
    assert seeds["cells"][0]["why"] == "claim (a) at 80 %: gap -0.45 under twice the dense spread"
    notes = "\n".join(claims.notes(claims.judge(rows + [row("dense", 0.0, 30.3, seed=2)])))
    assert "- Second seeds wanted (a claim's gap under twice the dense seeds' range, 0.60 BLEU, and the sign " \
           "control): slt 80 % (claim (a) at 80 %" in notes


def test_a_seed_run_twice_is_counted_as_runs_not_as_seeds():
    """The same command and seed on another processor gives other floats: a third run, not a third seed."""
    rows = [dict(row("dense", 0.0, bleu, seed), run=f"/w/dense{i}", dense_fp32_bytes=1, bitmap_fp32_bytes=1)
            for i, (bleu, seed) in enumerate(((30.0, 1), (30.2, 2), (30.6, 2)))]
    rows.append(dict(row("slt", 0.5, 29.0), run="/w/slt", dense_fp32_bytes=1, bitmap_fp32_bytes=1))
    for r in rows:
        r["score"]["signature"] = "nrefs:1"
    table = report.markdown({"rows": rows, "unfinished": []}, chrf=False)
    assert "| 0 (dense) | 0.00 MB | 30.3 (30.0-30.6, 3 runs of seeds 1, 2, 2) |" in table, table
    assert "2 seeds" in report.markdown({"rows": rows[1:2] + rows[0:1] + rows[3:], "unfinished": []}, chrf=False)
