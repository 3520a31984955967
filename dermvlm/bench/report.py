"""Benchmark outputs: results.json, report.md and two PNG plots (per domain and per
Fitzpatrick group, bars with bootstrap 95 % intervals)."""
import json
from pathlib import Path


def write_report(results, out_dir):
    out_dir = Path(out_dir)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    _bar_plot(results["by_domain"], "primary score by domain", out_dir / "by_domain.png")
    _bar_plot(results["by_fitzpatrick"]["groups"], "primary score by Fitzpatrick group",
              out_dir / "by_fitzpatrick.png")
    (out_dir / "report.md").write_text(markdown(results))


def _fmt(entry, name):
    if name not in entry:
        return "–"
    low, high = entry.get(f"{name}_ci95") or (None, None)
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
    return f"{entry[name]:.3f}{interval}"


def markdown(results):
    lines = [f"# DermaBench-style report: `{results['model']}`", "",
             f"{results['n_items']} answers scored; {results['left_out']} answer rows left out "
             f"(see left_out.jsonl); {results['unparsed']} closed answers could not be parsed "
             "(scored wrong, see unparsed.jsonl). Intervals: bootstrap 95 % resampling images "
             "(all answers about an image together), so they hold when an image's answers "
             "are correlated; `n` counts answers, `images` the clusters.", "",
             "Primary metric: accuracy (single choice), example-F1 (multi choice), ROUGE-L "
             "(open).", "", "## By question type", "",
             "| type | n | images | primary [images] | per-answer interval |",
             "|---|---|---|---|---|"]
    for name, entry in results["by_type"].items():
        low, high = entry.get("primary_ci95_per_answer") or (0, 0)
        lines.append(f"| {name} | {entry['n']} | {entry['images']} | "
                     f"{_fmt(entry, 'primary')} | [{low:.2f}, {high:.2f}] |")
    if results["chance"].get("single") is not None:
        lines += ["", f"Chance on single-choice questions (mean of 1/k): "
                      f"{results['chance']['single']:.3f}."]
    lines += ["", "## By Fitzpatrick group", "", "| group | n | primary |", "|---|---|---|"]
    for name, entry in results["by_fitzpatrick"]["groups"].items():
        lines.append(f"| {name} | {entry['n']} | {_fmt(entry, 'primary')} |")
    gap = results["by_fitzpatrick"]["best_minus_worst"]
    lines += ["", f"Best minus worst group: {gap:.3f}." if gap is not None else "",
              "", "![by Fitzpatrick group](by_fitzpatrick.png)", "",
              "## By domain", "", "| domain | n | primary |", "|---|---|---|"]
    for name, entry in results["by_domain"].items():
        lines.append(f"| {name} | {entry['n']} | {_fmt(entry, 'primary')} |")
    lines += ["", "![by domain](by_domain.png)", "", "## By question", "",
              "| question | type | n | accuracy | example-F1 | Jaccard | exact | ROUGE-L | "
              "METEOR | BLEU-4 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for qid, e in results["by_question"].items():
        cells = [_fmt(e, m) for m in ("accuracy", "example_f1", "jaccard", "exact_match",
                                      "rouge_l", "meteor")]
        bleu = f"{e['bleu4']:.1f}" if "bleu4" in e else "–"
        lines.append(f"| {qid} | {e['type']} | {e.get('n', 0)} | " + " | ".join(cells)
                     + f" | {bleu} |")
    if results.get("ece_single") is not None:
        lines += ["", f"Expected calibration error (single choice): "
                      f"{results['ece_single']:.3f}."]
    return "\n".join(lines) + "\n"


def _bar_plot(groups, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(groups)
    values = [groups[n]["primary"] for n in names]
    low = [v - (groups[n].get("primary_ci95") or (v, v))[0] for n, v in zip(names, values)]
    high = [(groups[n].get("primary_ci95") or (v, v))[1] - v for n, v in zip(names, values)]
    fig, ax = plt.subplots(figsize=(max(4, 0.55 * len(names) + 2), 3.6), dpi=110)
    ax.bar(range(len(names)), values, yerr=[low, high], capsize=3, color="#6a8caf")
    ax.set_xticks(range(len(names)), names, rotation=40 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("primary score")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
