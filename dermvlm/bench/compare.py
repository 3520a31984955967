"""Paired comparison of two benchmark runs on the same questions: per metric and slice, the
difference B - A over the answers both runs scored, a 95 % interval from a bootstrap that
resamples images (both runs' answers about an image move together), and a two-sided p-value
from a sign-flip permutation test over images (under "no difference", swapping the two runs'
answers about any image changes nothing). Writes compare.json, compare.md and compare.png."""
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from dermvlm.errors import DataError

METRICS = ("primary", "accuracy", "example_f1", "jaccard", "exact_match", "rouge_l", "meteor")


def load_scored(run_dir):
    """{(image_id, question_id): scored row} from a run folder's scored.jsonl."""
    path = Path(run_dir) / "scored.jsonl"
    if not path.is_file():
        raise DataError(f"{run_dir}: no scored.jsonl; give a folder written by "
                        "`dermvlm eval dermabench --out`")
    rows = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            rows[(row["image_id"], row["question_id"])] = row
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{line_no}: not a scored row ({exc})") from None
    return rows


def paired_difference(a, b, clusters, n_resamples=2000, seed=0):
    """{difference, ci95, p_value, n, images} for paired values a, b (one per answer)."""
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    _, index = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    sums, counts = np.bincount(index, diff), np.bincount(index).astype(np.float64)
    observed = sums.sum() / counts.sum()
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), (n_resamples, len(sums)))
    boot = sums[draws].sum(1) / counts[draws].sum(1)
    signs = rng.choice((-1.0, 1.0), (n_resamples, len(sums)))
    flipped = (signs * sums).sum(1) / counts.sum()
    p_value = (1 + np.sum(np.abs(flipped) >= abs(observed) - 1e-12)) / (1 + n_resamples)
    return {"difference": round(float(observed), 4),
            "ci95": [round(float(np.percentile(boot, 2.5)), 4),
                     round(float(np.percentile(boot, 97.5)), 4)],
            "p_value": round(float(p_value), 4), "n": int(len(diff)), "images": len(sums)}


def compare_runs(run_a, run_b, out_dir=None, n_resamples=2000, seed=0):
    """Per slice (all, each type, each domain) and metric, A, B and the paired difference."""
    a, b = load_scored(run_a), load_scored(run_b)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise DataError(f"{run_a} and {run_b} share no (image, question) answers: were they "
                        "run on the same questions and answers files?")
    slices = defaultdict(list)
    for key in shared:
        row = a[key]
        for name in ("all", f"type:{row['type']}", f"domain:{row['domain']}"):
            slices[name].append(key)
    table = {}
    for name, keys in sorted(slices.items(), key=lambda x: (x[0] != "all", x[0])):
        for metric in METRICS:
            kept = [k for k in keys if metric in a[k]["scores"] and metric in b[k]["scores"]]
            if not kept:
                continue
            va = [a[k]["scores"][metric] for k in kept]
            vb = [b[k]["scores"][metric] for k in kept]
            table[f"{name} / {metric}"] = {
                "a": round(float(np.mean(va)), 4), "b": round(float(np.mean(vb)), 4),
                **paired_difference(va, vb, [k[0] for k in kept], n_resamples, seed)}
    result = {"a": str(run_a), "b": str(run_b), "shared_answers": len(shared),
              "only_a": len(set(a) - set(b)), "only_b": len(set(b) - set(a)),
              "comparisons": table}
    if out_dir is not None:
        write_comparison(result, Path(out_dir))
    return result


def write_comparison(result, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Paired comparison: B = `{result['b']}` vs A = `{result['a']}`", "",
             f"{result['shared_answers']} answers scored by both (A only: {result['only_a']}, "
             f"B only: {result['only_b']}). Difference B - A; 95 % interval resampling images; "
             "p: sign-flip permutation over images, two-sided.", "",
             "| slice / metric | A | B | B - A | 95 % interval | p | answers | images |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in result["comparisons"].items():
        lines.append(f"| {name} | {row['a']:.3f} | {row['b']:.3f} | {row['difference']:+.3f} "
                     f"| [{row['ci95'][0]:+.3f}, {row['ci95'][1]:+.3f}] | {row['p_value']:.4f} "
                     f"| {row['n']} | {row['images']} |")
    (out_dir / "compare.md").write_text("\n".join(lines + ["", "![differences](compare.png)"])
                                        + "\n")
    _plot(result, out_dir / "compare.png")


def _plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = {k: v for k, v in result["comparisons"].items() if k.endswith("/ primary")}
    names = list(rows)
    diff = [rows[n]["difference"] for n in names]
    low = [d - rows[n]["ci95"][0] for n, d in zip(names, diff)]
    high = [rows[n]["ci95"][1] - d for n, d in zip(names, diff)]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2), dpi=110)
    ax.errorbar(diff, range(len(names)), xerr=[low, high], fmt="o", color="#6a8caf",
                capsize=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(names)), [n.replace(" / primary", "") for n in names], fontsize=8)
    ax.set_xlabel("primary score, B - A (95 % interval over images)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
