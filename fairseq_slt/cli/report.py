"""``fairseq-slt results``' outputs: the Markdown table (cells with their seeds' mean and range, the
claims' verdicts, what each cell cost) and the BLEU-vs-sparsity plot."""
import os
import statistics
from typing import Dict, List

from . import claims, figures

CONTROLS = (("prune_clt_random_signs", "random signs"), ("prune_random_mask", "random mask"),
            ("prune_reinit", "reinit"))  # identity key -> how a control's label names it
ORDER = ["dense", "mp", "lt", "slt", "clt", "slt-mp", "mp-slt"]  # the paper's column order


def markdown(result: dict, chrf: bool) -> str:
    rows = [r for r in result["rows"] if r["score"] is not None]
    table = claims.cells(rows)
    labels = _method_labels(rows) or ["dense"]  # only the dense run so far
    dense = next((c for (label, _), c in table.items() if label == "dense"), None)
    levels = sorted({s for (label, s) in table if label != "dense"})

    def cell(c):
        if c is None:
            return "-"
        text = f"{c['mean']:.1f}" + (f" ({c['min']:.1f}-{c['max']:.1f}, {_runs(c)})" if c["n"] > 1 else "")
        if chrf:
            text += " / " + f"{statistics.mean(_chrf(rows, c)):.1f}"
        return text

    lines = ["| sparsity | size (bitmap + fp32) | " + " | ".join(labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    if dense is not None:
        size = min(r["dense_fp32_bytes"] for r in rows if r["label"] == "dense")
        lines.append(f"| 0 (dense) | {_mb(size)} | " + " | ".join(cell(dense) for _ in labels) + " |")
    for level in levels:
        size = min(r["bitmap_fp32_bytes"] for r in rows if r["target_sparsity"] == level
                   and r["label"] != "dense")
        lines.append(f"| {level * 100:g} % | {_mb(size)} | "
                     + " | ".join(cell(table.get((label, level))) for label in labels) + " |")
    notes = ["", f"Cells: test BLEU{' / chrF' if chrf else ''} (sacreBLEU, detokenized, cased); with several "
             "seeds the mean, then the range; '-': not run."]
    notes += [f"BLEU signature: `{s}`" for s in sorted({r["score"]["signature"] for r in rows})]
    timed = [r["train_seconds"] for r in result["rows"] if r.get("train_seconds") is not None]
    if timed:
        notes.append("Training time (fairseq's wall time of each run, validation included): "
                     f"{_count(len(timed), 'run')}, {sum(timed) / 3600:.2f} h in all, "
                     f"median {statistics.median(timed) / 60:.1f} min.")
    notes += _environments(result["rows"])
    if "claims" in result:
        notes += claims.notes(result)
    costs = cost_table(rows, labels, levels)
    notes += costs + ([""] if costs else [])  # what follows a Markdown table must not read as its last row
    name = run_namer([r["run"] for r in result["rows"] + result["unfinished"] + result.get("copies", [])])
    for row in result["rows"]:
        if row.get("scored_instead"):
            notes.append(f"Scored another checkpoint: {name(row['run'])}: {row['scored_instead']}")
    for item in result.get("copies", []):
        notes.append(f"Not a second run: {name(item['run'])} has the same weights bit for bit as "
                     f"{name(item['same_weights_as'])}")
    for item in result["unfinished"]:
        notes.append(f"Unfinished: {name(item['run'])} ({item['why']})")
    return "\n".join(lines + notes) + "\n"


def _runs(cell: dict) -> str:
    """'2 seeds', or where a seed was run twice (the same command on another processor) '3 runs of seeds 1, 2, 2'."""
    if len(set(cell["seeds"])) == cell["n"]:
        return f"{cell['n']} seeds"
    return f"{cell['n']} runs of seeds {', '.join(map(str, cell['seeds']))}"


def _count(n, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def run_namer(runs: List[str]):
    """A run as the table names it: from the folder that holds every one of ``runs`` (mp/mp_0.9, not
    /home/.../mp/mp_0.9: a committed table says nothing about one machine's paths; the JSON keeps the full paths)."""
    parents = [os.path.dirname(os.path.abspath(run)) for run in runs]
    base = os.path.commonpath(parents) if parents else os.sep
    return lambda run: os.path.relpath(os.path.abspath(run), base)


def _environments(rows: List[dict]) -> List[str]:
    """Where the runs were trained (run.json): the same command gives other floats on another processor."""
    setups = {}
    for row in rows:
        setups.setdefault(setup_of(row.get("environment")), []).append(row)
    if len(setups) == 1:
        return [f"Trained on: {next(iter(setups))}."]
    return [f"Trained on {len(setups)} setups, which give the same command other results: "
            + "; ".join(f"{key}: {_count(len(group), 'run')}" for key, group in sorted(setups.items())) + "."]


def setup_of(env) -> str:
    """Where a run was trained, in words (run.json's "environment")."""
    return "not recorded" if not env else (
        f"{env.get('cuda') or env.get('cpu')} ({env.get('cpu_capability')}), {_count(env.get('threads'), 'thread')}, "
        f"torch {env.get('torch')}")


def cost_table(rows: List[dict], labels: List[str], levels: List[float]) -> List[str]:
    """Per cell: updates in all (its dense run and earlier levels included) and CPU hours, for one seed."""
    costs: Dict[tuple, dict] = {}
    for row in rows:
        if row.get("cost_updates") is not None:
            costs.setdefault((row["label"], row["target_sparsity"]), row)
    if not costs:
        return []

    def cell(row):
        if row is None:
            return "-"
        hours = f", {row['cost_hours']:.2f} h" if row.get("cost_hours") is not None else ""
        return f"{row['cost_updates']:,} ({_count(row['cost_runs'], 'run')}{hours})"

    lines = ["", "Cost of each cell in all (updates of every run it needs, its dense run and earlier levels "
             "included, and their CPU hours):", "",
             "| sparsity | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    dense = next((r for r in rows if r["label"] == "dense" and r.get("cost_updates") is not None), None)
    if dense is not None:
        lines.append("| 0 (dense) | " + " | ".join(cell(dense) for _ in labels) + " |")
    for level in levels:
        lines.append(f"| {level * 100:g} % | " + " | ".join(cell(costs.get((label, level))) for label in labels) + " |")
    return lines


def _chrf(rows: List[dict], c: dict) -> List[float]:
    return [r["score"]["chrf"] for r in rows if r["label"] == c["label"] and r["target_sparsity"] == c["sparsity"]]


def _method_labels(rows: List[dict]) -> List[str]:
    """The methods in the paper's column order (controls after their method)."""
    def key(label):
        method = label.split(" ")[0]
        return ORDER.index(method) if method in ORDER else len(ORDER), label
    return sorted({r["label"] for r in rows if r["label"] != "dense"}, key=key)


def _color(label: str) -> str:
    """One colour per method whatever else is plotted, so plots of different runs compare at a glance:
    C1-C6 for the methods (in ORDER), C7-C9 for the controls."""
    method = label.split(" ")[0]
    for index, (_, name) in enumerate(CONTROLS):
        if label.endswith(f"({name})"):
            return f"C{7 + index}"
    return f"C{ORDER.index(method)}" if method in ORDER else "black"


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def plot(result: dict, target: str) -> None:
    """BLEU against sparsity, one line per method through the seeds' means, their range as error bars."""
    plt = figures.pyplot()
    table = claims.cells([r for r in result["rows"] if r["score"] is not None])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    dense = next((c for (label, _), c in table.items() if label == "dense"), None)
    if dense is not None:
        ax.axhline(dense["mean"], color="black", linestyle="--", label=f"dense ({dense['mean']:.1f})")
        if dense["n"] > 1:
            ax.axhspan(dense["min"], dense["max"], color="black", alpha=0.08)
    for label in _method_labels(list(table.values())):
        points = sorted((s * 100, c) for (name, s), c in table.items() if name == label)
        xs, cs = [x for x, _ in points], [c for _, c in points]
        ys = [c["mean"] for c in cs]
        errors = [[c["mean"] - c["min"] for c in cs], [c["max"] - c["mean"] for c in cs]]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label, color=_color(label))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test BLEU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figures.save(fig, target)
