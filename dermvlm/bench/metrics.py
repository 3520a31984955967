"""Benchmark metrics: accuracy (single choice), example-F1 / Jaccard / exact match (multi
choice), BLEU-4 / ROUGE-L / METEOR (open), bootstrap intervals, calibration error.

BLEU is sacrebleu's corpus BLEU, ROUGE-L rouge-score's F-measure and METEOR nltk's — called
here, on the same inputs, so figures are comparable with papers that use those packages.
METEOR runs with an empty synonym table (exact and stem matches): nltk's WordNet data is a
download, and this toolkit runs offline.
"""
import numpy as np


def example_f1(predicted, truth):
    predicted, truth = set(predicted), set(truth)
    if not predicted and not truth:
        return 1.0
    overlap = len(predicted & truth)
    return 2 * overlap / (len(predicted) + len(truth))


def jaccard(predicted, truth):
    predicted, truth = set(predicted), set(truth)
    union = predicted | truth
    return len(predicted & truth) / len(union) if union else 1.0


def exact_match(predicted, truth):
    return float(set(predicted) == set(truth))


def bleu4(hypotheses, references):
    """Corpus BLEU-4 (sacrebleu defaults: 13a tokenisation, exp smoothing), 0-100."""
    import sacrebleu
    if not hypotheses:
        return None
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score


def rouge_l(hypothesis, reference):
    """ROUGE-L F-measure (rouge-score, no stemming), 0-1."""
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(["rougeL"]).score(reference, hypothesis)["rougeL"].fmeasure


class _NoSynonyms:
    """Stands in for WordNet: METEOR then matches exact words and Porter stems only."""

    @staticmethod
    def synsets(*_args, **_kwargs):
        return []


def meteor(hypothesis, reference):
    """nltk METEOR (alpha 0.9, beta 3, gamma 0.5) on whitespace tokens, 0-1."""
    from nltk.translate.meteor_score import meteor_score
    return meteor_score([reference.split()], hypothesis.split(), wordnet=_NoSynonyms())


def wilson_interval(hits, n, z=1.96, digits=4):
    """Wilson score interval of a proportion (sound at 0 of n, unlike the bootstrap)."""
    if n == 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return [low, high] if digits is None else [round(low, digits), round(high, digits)]


def bootstrap_ci(values, n_resamples=1000, seed=0, level=0.95):
    """Percentile bootstrap interval of the mean of `values` (deterministic by seed)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_resamples, len(values)))].mean(1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def bootstrap_statistic_ci(statistic, n, n_resamples=1000, seed=0, level=0.95):
    """Percentile bootstrap interval of `statistic(indices)` over `n` items resampled with
    replacement (for statistics that are not a mean: balanced accuracy, AUROC); draws where
    it is undefined (None) are skipped."""
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(n_resamples)]
    values = [v for v in values if v is not None]
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def clustered_bootstrap_ci(values, clusters, n_resamples=1000, seed=0, level=0.95):
    """Percentile bootstrap interval of the mean of `values` resampling whole clusters (all
    answers about one image go together): answers about one image are not independent, so
    resampling answers gives intervals that are too narrow (lmms-eval's clustered standard
    errors, for the same reason). The statistic is the mean over the drawn clusters' answers."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return None
    _, index = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    sums, counts = np.bincount(index, values), np.bincount(index).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), (n_resamples, len(sums)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def expected_calibration_error(confidences, correct, bins=10):
    """ECE: sum over equal-width confidence bins of |accuracy - confidence| x bin share."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidences) == 0:
        return None
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidences[mask].mean())
    return float(ece)
