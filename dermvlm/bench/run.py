"""Run a benchmark: ask every (image, question), cache predictions, score, report.

Predictions are appended to out/predictions.jsonl as they come, so a killed run continues
where it stopped; answers whose image is missing are reported and left out of scoring; replies
that cannot be parsed are logged to out/unparsed.jsonl and scored wrong. Under torchrun or
`accelerate launch` each rank answers every world-th item (into predictions.rankR.jsonl), and
rank 0 merges them and scores all: the results are a single process's.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

import dermvlm.bench.metrics as metrics
from dermvlm.bench.adapters import EndpointError
from dermvlm.bench.parse import parse_answer
from dermvlm.errors import DataError, DermvlmError
from dermvlm.questions import load_questions
from dermvlm.ranks import barrier
from dermvlm.vocab import FITZPATRICK_GROUPS, fitzpatrick_group

PRIMARY = {"single": "accuracy", "multi": "example_f1", "open": "rouge_l"}
MAX_CONSECUTIVE_ENDPOINT_ERRORS = 3


def load_items(questions_file, answers_file, images_dir=None):
    """(questions by id, items, problems). items: dicts with image_id, image (path),
    question_id, answer, group. problems: answer rows left out, with reasons."""
    questions = {q.id: q for q in load_questions(questions_file)}
    answers_file = Path(answers_file)
    base = Path(images_dir) if images_dir else answers_file.parent
    items, problems = [], []
    try:
        lines = answers_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{answers_file}: cannot read answers: {exc}") from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{answers_file.name}:{line_no}"
        try:
            row = json.loads(line)
            question = questions[row["question_id"]]
            image = Path(row["image"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            problems.append({"row": where, "reason": f"bad answer row ({exc})"})
            continue
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            problems.append({"row": where, "reason": f"missing image: {image}"})
            continue
        group = row.get("fitzpatrick_group") or fitzpatrick_group(row.get("fitzpatrick"))
        items.append({"image_id": row.get("image_id", image.stem), "image": str(image),
                      "question_id": question.id, "answer": row["answer"],
                      "group": group or "unknown"})
    return questions, items, problems


def _read_predictions(files):
    done = {}
    for cache_file in files:
        for line in cache_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:   # the line being written when a run was killed
                continue
            done[(row["image_id"], row["question_id"])] = row
    return done


def predict(items, questions, adapter, spec, out_dir, progress=True, rank=0, world=1):
    """{(image_id, question_id): prediction row}, resuming from out_dir/predictions.jsonl.
    `spec` names the model; a folder holding another model's predictions is refused. With
    world > 1 this rank answers every world-th item still to do, and every rank returns all
    the predictions (rank 0 has merged the ranks' files into predictions.jsonl)."""
    out_dir = Path(out_dir)
    cache_file, run_file = out_dir / "predictions.jsonl", out_dir / "run.json"
    cached_spec = json.loads(run_file.read_text())["model"] if run_file.is_file() else spec
    if cached_spec != spec:
        raise DermvlmError(f"{out_dir} holds predictions of {cached_spec!r}, not {spec!r}; "
                           "use another --out")
    barrier(world)                          # every rank has read run.json before it is written
    if rank == 0:
        run_file.write_text(json.dumps({"model": spec}))
    # a killed data-parallel run left its ranks' files: they count as done too
    rank_files = sorted(out_dir.glob("predictions.rank*.jsonl"))
    done = _read_predictions(([cache_file] if cache_file.exists() else []) + rank_files)
    todo = [i for i in items if (i["image_id"], i["question_id"]) not in done][rank::world]
    if world > 1:
        done = _predict_todo(todo, questions, adapter, done, out_dir /
                             f"predictions.rank{rank}.jsonl", progress and rank == 0)
        barrier(world)
        done = _read_predictions(([cache_file] if cache_file.exists() else []) +
                                 sorted(out_dir.glob("predictions.rank*.jsonl")))
        barrier(world)                      # every rank has read them before rank 0 merges
        if rank == 0:
            _write_jsonl(cache_file, done.values())
            for merged in out_dir.glob("predictions.rank*.jsonl"):
                merged.unlink()
        return done
    return _predict_todo(todo, questions, adapter, done, cache_file, progress)


def _predict_todo(todo, questions, adapter, done, cache_file, progress):
    """Answer `todo`, appending each prediction row to cache_file; returns `done` with them."""
    failures, step = 0, getattr(adapter, "batch_size", 1)     # adapters with answer_batch
    bar = tqdm(total=len(todo), desc=f"dermabench ({adapter.name})", disable=not progress)
    with open(cache_file, "a") as cache:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            asked = [questions[item["question_id"]] for item in chunk]
            try:
                answers = (adapter.answer_batch(chunk, asked) if step > 1 else
                           [adapter.answer(chunk[0], asked[0])])
                failures = 0
            except EndpointError as exc:
                failures += 1
                print(f"warning: {chunk[0]['image_id']} {asked[0].id}: {exc}", file=sys.stderr)
                if failures >= MAX_CONSECUTIVE_ENDPOINT_ERRORS:
                    raise DermvlmError(f"{failures} endpoint errors in a row ({exc}); stopped. "
                                       f"{len(done)} finished predictions are kept in "
                                       f"{cache_file}; rerun to continue") from None
                continue
            finally:
                bar.update(len(chunk))
            for item, question, prediction in zip(chunk, asked, answers):
                row = {"image_id": item["image_id"], "question_id": question.id,
                       "text": prediction.text, "confidence": prediction.confidence}
                cache.write(json.dumps(row) + "\n")
                done[(row["image_id"], row["question_id"])] = row
            cache.flush()
    bar.close()
    return done


def score_items(items, questions, predictions):
    """Per-item scores {metric: value}, and the replies that could not be parsed."""
    scored, unparsed = [], []
    for item in items:
        question = questions[item["question_id"]]
        row = predictions.get((item["image_id"], question.id))
        text = row["text"] if row else ""
        parsed = parse_answer(text, question)
        if parsed is None and question.type != "open":
            unparsed.append({"image_id": item["image_id"], "question_id": question.id,
                             "reply": text, "missing": row is None})
        truth = item["answer"]
        if question.type == "single":
            values = {"accuracy": float(parsed == truth)}
        elif question.type == "multi":
            guess = parsed or []
            values = {"example_f1": metrics.example_f1(guess, truth),
                      "jaccard": metrics.jaccard(guess, truth),
                      "exact_match": metrics.exact_match(guess, truth)}
        else:
            guess = parsed or ""
            values = {"rouge_l": metrics.rouge_l(guess, truth),
                      "meteor": metrics.meteor(guess, truth)}
        scored.append({**item, "type": question.type, "domain": question.domain,
                       "prediction": parsed, "scores": values,
                       "confidence": row.get("confidence") if row else None})
    return scored, unparsed


def _summary(rows, metric_names, seed):
    """Mean of each metric with two bootstrap 95 % intervals: `_ci95` resamples images
    (clusters; the one to quote) and `_ci95_per_answer` resamples answers."""
    out = {"n": len(rows), "images": len({r["image_id"] for r in rows})}
    for name in metric_names:
        kept = [r for r in rows if name in r["scores"]]
        values = [r["scores"][name] for r in kept]
        if values:
            out[name] = round(sum(values) / len(values), 4)
            clustered = metrics.clustered_bootstrap_ci(values, [r["image_id"] for r in kept],
                                                       seed=seed)
            out[f"{name}_ci95"] = [round(v, 4) for v in clustered]
            out[f"{name}_ci95_per_answer"] = [round(v, 4) for v in
                                              metrics.bootstrap_ci(values, seed=seed)]
    return out


def aggregate(scored, questions, seed=0):
    """Results by question, domain, type and Fitzpatrick group, with CIs and group gaps.
    Domains, types and groups are summarised by each item's primary metric (accuracy,
    example-F1 or ROUGE-L, by question type)."""
    for r in scored:
        r["scores"]["primary"] = r["scores"][PRIMARY[r["type"]]]
    results = {"n_items": len(scored), "by_question": {}, "by_domain": {}, "by_type": {}}
    by_question = defaultdict(list)
    for r in scored:
        by_question[r["question_id"]].append(r)
    for qid, q in questions.items():
        rows = by_question.get(qid, [])
        names = [n for n in rows[0]["scores"] if n != "primary"] if rows else []
        entry = {"domain": q.domain, "type": q.type, **_summary(rows, names, seed)}
        if rows and q.type == "open":
            entry["bleu4"] = round(metrics.bleu4([r["prediction"] or "" for r in rows],
                                                 [r["answer"] for r in rows]), 2)
        results["by_question"][qid] = entry
    for key, field in (("by_domain", "domain"), ("by_type", "type")):
        groups = defaultdict(list)
        for r in scored:
            groups[r[field]].append(r)
        results[key] = {name: _summary(rows, ["primary"], seed)
                        for name, rows in sorted(groups.items())}
    groups = {}
    for group in list(FITZPATRICK_GROUPS) + ["unknown"]:
        members = [r for r in scored if r["group"] == group]
        if members:
            groups[group] = _summary(members, ["primary"], seed)
    known = [v["primary"] for g, v in groups.items() if g != "unknown"]
    results["by_fitzpatrick"] = {"groups": groups,
                                 "best_minus_worst": round(max(known) - min(known), 4)
                                 if len(known) > 1 else None}
    single = [r for r in scored if r["type"] == "single" and r["confidence"] is not None]
    results["ece_single"] = metrics.expected_calibration_error(
        [r["confidence"] for r in single], [r["scores"]["accuracy"] for r in single]) \
        if single else None
    return results


def chance_levels(questions):
    """Expected primary score of the random adapter per question type, for the report:
    single 1/k; multi example-F1 of a random half against the truth is data-dependent, so it
    is left out."""
    singles = [1 / len(q.options) for q in questions.values() if q.type == "single"]
    return {"single": round(sum(singles) / len(singles), 4) if singles else None}


def run_benchmark(questions_file, answers_file, model_spec, out_dir, images_dir=None,
                  limit=None, seed=0, progress=True, judge=None, rank=0, world=1):
    """Predict (resumably), score and write results.json, report.md and plots to out_dir.
    `model_spec` is an adapter spec (see adapters.make_adapter) or an adapter object.
    `judge(question, prediction, reference) -> score in [0, 1]` is an optional LLM-judge hook
    for open questions, recorded beside the automatic metrics. `rank`, `world`: answer the
    items data-parallel (see predict); every rank returns the results, rank 0 writes them."""
    from dermvlm.bench.adapters import make_adapter
    from dermvlm.bench.report import write_report
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    questions, items, problems = load_items(questions_file, answers_file, images_dir)
    if limit:
        items = items[:limit]
    if not items:
        raise DataError(f"{answers_file}: no answer rows could be used "
                        f"({len(problems)} left out; first: "
                        f"{problems[0]['reason'] if problems else 'file is empty'})")
    answers = {(i["image_id"], i["question_id"]): i["answer"] for i in items}
    adapter = (model_spec if hasattr(model_spec, "answer")       # an adapter object
               else make_adapter(model_spec, answers=answers))
    model_spec = getattr(adapter, "spec", adapter.name)
    predictions = predict(items, questions, adapter, model_spec, out_dir, progress, rank,
                          world)
    scored, unparsed = score_items(items, questions, predictions)
    if judge is not None:
        for r in scored:
            if r["type"] == "open":
                r["scores"]["judge"] = float(judge(questions[r["question_id"]],
                                                   r["prediction"] or "", r["answer"]))
    results = {"model": model_spec, "questions": str(questions_file),
               "answers": str(answers_file), "seed": seed,
               "left_out": len(problems), "unparsed": len(unparsed),
               "chance": chance_levels(questions), **aggregate(scored, questions, seed)}
    if rank != 0:
        return results
    _write_jsonl(out_dir / "scored.jsonl", [
        {k: r[k] for k in ("image_id", "question_id", "type", "domain", "group", "scores")}
        for r in scored])
    _write_jsonl(out_dir / "left_out.jsonl", problems)
    _write_jsonl(out_dir / "unparsed.jsonl", unparsed)
    write_report(results, out_dir)
    return results


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
