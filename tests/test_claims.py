"""The claims' verdicts from results rows: seeds' mean and range, the noise, holds / fails / within noise."""
from fairseq_slt.cli import claims


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
