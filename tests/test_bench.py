"""The DermaBench-style evaluator: sanity adapters, metrics against reference libraries,
parsing, resumable predictions, an OpenAI-compatible stub endpoint, and bad input."""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score
from sklearn.preprocessing import MultiLabelBinarizer

import dermvlm.bench.metrics as metrics
from dermvlm.bench.adapters import ClipAdapter, OpenAIAdapter, VLMAdapter
from dermvlm.bench.parse import lettered_prompt, parse_answer
from dermvlm.bench.run import load_items, run_benchmark
from dermvlm.cli import main as dermvlm_main
from dermvlm.config import get_config
from dermvlm.errors import DataError, DermvlmError
from dermvlm.questions import DEFAULT_QUESTIONS, Question
from dermvlm.vlm.build import build_vlm
from tiny_parts import (tiny_lm, tiny_qwen2_vl_folder, tiny_tokenizer, tiny_vision,
                        vanilla_open_clip_folder)

COLOUR = Question("c", "colour", "single", "Main colour?", ("red", "brown", "dark brown"))
SURFACE = Question("s", "surface", "multi", "Surface?", ("smooth", "scale", "crust", "ulcer"))


@pytest.fixture(scope="module")
def bench_set(synth_dir):
    return (synth_dir / "dermabench_questions.json", synth_dir / "dermabench_answers.jsonl")


def _run(bench_set, model, out, **kw):
    return run_benchmark(*bench_set, model, out, progress=False, **kw)


def test_reference_scores_100_and_writes_every_output(bench_set, tmp_path):
    results = _run(bench_set, "reference", tmp_path)
    assert results["n_items"] == 40 * 22 and results["unparsed"] == 0
    for entry in results["by_type"].values():
        assert entry["primary"] == 1.0
    assert results["by_fitzpatrick"]["best_minus_worst"] == 0.0
    for name in ("results.json", "report.md", "by_domain.png", "by_fitzpatrick.png",
                 "predictions.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| single |" in (tmp_path / "report.md").read_text()


def test_random_scores_near_chance_per_type(bench_set, tmp_path):
    results = _run(bench_set, "random:3", tmp_path)
    single = results["by_type"]["single"]
    low, high = single["primary_ci95"]
    assert low - 0.05 < results["chance"]["single"] < high + 0.05
    assert 0.1 < results["by_type"]["multi"]["primary"] < 0.45
    again = _run(bench_set, "random:3", tmp_path / "again")
    assert again["by_type"] == results["by_type"]                 # deterministic


def test_clustered_intervals_widen_with_correlated_answers():
    """Fifty images, ten answers each, all answers of an image alike: resampling images
    gives an interval about sqrt(10) times as wide as resampling answers; with one answer
    per image the two agree."""
    rng = np.random.default_rng(0)
    per_image = rng.integers(0, 2, 50).astype(float)
    values, clusters = np.repeat(per_image, 10), np.repeat(np.arange(50), 10)
    width = lambda ci: ci[1] - ci[0]                                      # noqa: E731
    clustered = metrics.clustered_bootstrap_ci(values, clusters)
    per_answer = metrics.bootstrap_ci(values)
    assert 2.5 < width(clustered) / width(per_answer) < 4.0
    single = metrics.clustered_bootstrap_ci(per_image, np.arange(50))
    assert width(single) == pytest.approx(width(metrics.bootstrap_ci(per_image)), rel=0.25)
    assert clustered[0] <= values.mean() <= clustered[1]


def test_results_carry_both_intervals_and_the_image_count(bench_set, tmp_path):
    results = _run(bench_set, "random:1", tmp_path)
    single = results["by_type"]["single"]
    assert single["images"] == 40 and single["n"] > single["images"]
    assert {"primary_ci95", "primary_ci95_per_answer"} <= set(single)
    rows = [json.loads(x) for x in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert len(rows) == results["n_items"] and {"image_id", "scores"} <= set(rows[0])


def test_set_metrics_equal_sklearn_samples_average():
    rng = np.random.default_rng(0)
    options = list("abcdef")
    truth = [list(rng.choice(options, rng.integers(1, 4), replace=False)) for _ in range(50)]
    guess = [list(rng.choice(options, rng.integers(1, 4), replace=False)) for _ in range(50)]
    binarize = MultiLabelBinarizer(classes=options).fit([options])
    t, g = binarize.transform(truth), binarize.transform(guess)
    ours_f1 = np.mean([metrics.example_f1(a, b) for a, b in zip(guess, truth)])
    ours_j = np.mean([metrics.jaccard(a, b) for a, b in zip(guess, truth)])
    assert ours_f1 == pytest.approx(f1_score(t, g, average="samples"), abs=1e-12)
    assert ours_j == pytest.approx(jaccard_score(t, g, average="samples"), abs=1e-12)


def test_text_metrics_match_hand_computed_values():
    # ROUGE-L: LCS("the red scaly plaque", "a red plaque") = "red plaque" -> P 2/3, R 2/4
    assert metrics.rouge_l("a red plaque", "the red scaly plaque") == pytest.approx(
        2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert metrics.bleu4(["a red scaly plaque on the arm"],
                         ["a red scaly plaque on the arm"]) == pytest.approx(100.0)
    assert metrics.bleu4(["x y z w"], ["a b c d"]) == pytest.approx(0.0)
    # METEOR of an exact match: F-mean 1, one chunk -> penalty 0.5 * (1/6)^3
    assert metrics.meteor("red scaly plaque on arm skin", "red scaly plaque on arm skin") == \
        pytest.approx(1 - 0.5 * (1 / 6) ** 3, abs=1e-9)
    assert metrics.meteor("blue", "red plaque") == 0.0


def test_bootstrap_and_calibration():
    values = [1.0] * 30 + [0.0] * 70
    low, high = metrics.bootstrap_ci(values, seed=1)
    assert low < 0.3 < high and metrics.bootstrap_ci(values, seed=1) == [low, high]
    # two bins: conf 0.9 acc 1/2, conf 0.3 acc 1/2 -> 0.5*0.4 + 0.5*0.2
    ece = metrics.expected_calibration_error([0.9, 0.9, 0.3, 0.3], [1, 0, 1, 0])
    assert ece == pytest.approx(0.3)


@pytest.mark.parametrize("reply, expected", [
    ("B", "brown"), ("The answer is C.", "dark brown"), ("dark brown", "dark brown"),
    ("It looks brown to me", "brown"), ('["red"]', "red"), ("no idea", None), ("", None)])
def test_single_choice_parsing(reply, expected):
    assert parse_answer(reply, COLOUR) == expected


@pytest.mark.parametrize("reply, expected", [
    ("A, C", ["smooth", "crust"]), ('["scale", "ulcer"]', ["scale", "ulcer"]),
    ("There is scale and some crust.", ["scale", "crust"]), ("nothing", None)])
def test_multi_choice_parsing(reply, expected):
    assert parse_answer(reply, SURFACE) == expected


def test_lettered_prompt_lists_options():
    assert lettered_prompt(COLOUR).splitlines()[1:4] == ["A. red", "B. brown", "C. dark brown"]


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint: mode 'good' answers 'A', 'garbage' sends HTML,
    'slow' sleeps past the client's timeout; 'fail_after' n good answers, then HTTP 500."""
    mode, fail_after, requests = "good", None, 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.requests += 1
        assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/")
        if cls.mode == "slow":
            time.sleep(1.0)
        if cls.fail_after is not None and cls.requests > cls.fail_after:
            self.send_response(500)
            self.end_headers()
            return
        payload = (b"<html>oops</html>" if cls.mode == "garbage" else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": "A"}}]}).encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    _Stub.mode, _Stub.fail_after, _Stub.requests = "good", None, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_openai_endpoint_is_scored_and_resumes_after_failures(bench_set, stub, tmp_path):
    spec = f"openai:{stub}#stub-model"
    _Stub.fail_after = 25
    with pytest.raises(DermvlmError, match="finished predictions are kept"):
        _run(bench_set, spec, tmp_path, limit=60)
    kept = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(kept) == 25
    _Stub.fail_after, _Stub.requests = None, 0
    results = _run(bench_set, spec, tmp_path, limit=60)
    assert _Stub.requests == 60 - 25                        # only the rest was asked
    assert results["n_items"] == 60


def test_endpoint_timeout_and_garbage_are_reported(bench_set, stub, tmp_path):
    question = DEFAULT_QUESTIONS[1]
    _, items, _ = load_items(*bench_set)
    item = next(i for i in items if i["question_id"] == question.id)
    _Stub.mode = "slow"
    with pytest.raises(DermvlmError, match="timed out"):
        OpenAIAdapter(stub, "m", timeout=0.2).answer(item, question)
    _Stub.mode = "garbage"
    with pytest.raises(DermvlmError, match="not an OpenAI chat completion"):
        OpenAIAdapter(stub, "m").answer(item, question)


def test_clip_and_vlm_adapters_produce_full_reports(bench_set, synth_dir, tmp_path):
    folder = vanilla_open_clip_folder(tmp_path / "clip")
    clip = _run(bench_set, ClipAdapter(str(folder)), tmp_path / "clip_run", limit=44)
    assert clip["n_items"] == 44 and (tmp_path / "clip_run" / "report.md").is_file()
    tok = tiny_tokenizer()
    vlm = build_vlm(get_config("tiny", ["vlm.max_length=1024"]).vlm, lm=tiny_lm(tok),
                    tokenizer=tok, vision=tiny_vision()).eval()
    result = _run(bench_set, VLMAdapter(vlm=vlm, max_new_tokens=4), tmp_path / "vlm_run",
                  limit=22)
    assert result["n_items"] == 22 and len(result["by_question"]) == 22
    assert result["unparsed"] > 0          # a random LM's replies are logged, scored wrong
    logged = (tmp_path / "vlm_run" / "unparsed.jsonl").read_text().splitlines()
    assert len(logged) == result["unparsed"]


def test_unknown_question_type_and_missing_images(synth_dir, tmp_path):
    data = json.loads((synth_dir / "dermabench_questions.json").read_text())
    data["questions"][3]["type"] = "ranking"
    bad = tmp_path / "q.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"q.json: question 3 \(Q04_site\): unknown type"):
        load_items(bad, synth_dir / "dermabench_answers.jsonl")
    rows = (synth_dir / "dermabench_answers.jsonl").read_text().splitlines()[:30]
    rows[4] = rows[4].replace('"image": "images/', '"image": "images/gone_')
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(rows) + "\n")
    _, items, problems = load_items(synth_dir / "dermabench_questions.json", answers,
                                    images_dir=synth_dir)
    assert len(items) == 29 and problems[0]["row"] == "answers.jsonl:5"
    assert "missing image" in problems[0]["reason"]


def test_cli_one_line_errors(bench_set, tmp_path, capsys):
    code = dermvlm_main(["eval", "dermabench", "--questions", str(bench_set[0]), "--answers",
                         str(bench_set[1]), "--model", "gpt:4", "--out", str(tmp_path)])
    assert code == 2 and "unknown model spec 'gpt:4'" in capsys.readouterr().err


def test_out_folder_of_another_model_is_refused(bench_set, tmp_path):
    _run(bench_set, "reference", tmp_path, limit=5)
    with pytest.raises(DermvlmError, match="holds predictions of 'reference', not 'random'"):
        _run(bench_set, "random", tmp_path, limit=5)


def test_paired_comparison_of_two_runs(bench_set, tmp_path, capsys):
    """`dermvlm eval compare`: a run against itself differs by exactly 0 with p = 1; random
    against the reference loses clearly (interval below 0, small p); the files are written."""
    from dermvlm.bench.compare import compare_runs, paired_difference
    _run(bench_set, "reference", tmp_path / "ref")
    _run(bench_set, "random:2", tmp_path / "rand")
    same = compare_runs(tmp_path / "ref", tmp_path / "ref")["comparisons"]["all / primary"]
    assert same["difference"] == 0 and same["p_value"] == 1.0
    assert dermvlm_main(["eval", "compare", str(tmp_path / "ref"), str(tmp_path / "rand"),
                         "--out", str(tmp_path / "cmp"), "--resamples", "500"]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    overall = result["comparisons"]["all / primary"]
    assert overall["difference"] < 0 and overall["ci95"][1] < 0 and overall["p_value"] < 0.01
    assert overall["images"] == 40 and result["shared_answers"] == 40 * 22
    assert "type:single / accuracy" in result["comparisons"]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    assert "p=" in capsys.readouterr().out
    # a constant +0.1 per answer: difference 0.1, the interval collapses onto it
    shifted = paired_difference([0.5] * 30, [0.6] * 30, list(range(10)) * 3)
    assert shifted["difference"] == pytest.approx(0.1) and shifted["ci95"] == [0.1, 0.1]
    assert dermvlm_main(["eval", "compare", str(tmp_path), str(tmp_path / "ref")]) == 2


def test_hf_adapter_on_a_merge_export_agrees_with_the_vlm_adapter(bench_set, tmp_path):
    """`hf:` loads a transformers image-text-to-text checkpoint with its own processor; on
    dermvlm's own merge-export it answers 20 questions exactly as `vlm:` does the original,
    one at a time and in batches of 4 (left-padded)."""
    from dermvlm.bench.hf_adapter import HFAdapter
    from dermvlm.vlm.export import export_llava
    tok = tiny_tokenizer()
    vlm = build_vlm(get_config("tiny", ["vlm.max_length=512"]).vlm, lm=tiny_lm(tok),
                    tokenizer=tok, vision=tiny_vision()).eval()
    export_llava(vlm, tmp_path / "llava")
    questions, answers = bench_set
    common = dict(progress=False, limit=20)
    ours = run_benchmark(questions, answers, VLMAdapter(vlm=vlm), tmp_path / "vlm", **common)
    hf = HFAdapter(str(tmp_path / "llava"), batch_size=1)
    theirs = run_benchmark(questions, answers, hf, tmp_path / "hf1", **common)
    hf.batch_size = 4
    batched = run_benchmark(questions, answers, hf, tmp_path / "hf4", **common)
    texts = [[json.loads(x)["text"] for x in (tmp_path / d / "predictions.jsonl")
              .read_text().splitlines()] for d in ("vlm", "hf1", "hf4")]
    assert len(texts[0]) == 20 and texts[0] == texts[1] == texts[2]
    assert ours["by_type"] == theirs["by_type"] == batched["by_type"]
    with pytest.raises(DermvlmError, match="needs the Hugging Face Hub"):
        HFAdapter("org/some-vlm")


def test_hf_adapter_scores_a_tiny_qwen2_vl(bench_set, tmp_path):
    """A second family: a random Qwen2-VL built here, prompted through its own processor's
    chat template (which places the image), batched; every answer is recorded and scored."""
    folder = tiny_qwen2_vl_folder(tmp_path / "qwen")
    results = run_benchmark(*bench_set, "hf:" + str(folder), tmp_path / "run", limit=12,
                            progress=False)
    assert results["model"] == f"hf:{folder}" and results["n_items"] == 12
    rows = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == 12
    from dermvlm.bench.hf_adapter import HFAdapter
    prompt = HFAdapter(str(folder)).prompt(DEFAULT_QUESTIONS[0])
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt


def test_two_ranks_evaluate_item_for_item_as_one_process(synth_dir, tmp_path):
    """torchrun, gloo: the DermaBench evaluator (clip: adapter) and eval.zeroshot over 2
    ranks give one process's predictions and report; rank 0 alone prints."""
    import launch
    clip = vanilla_open_clip_folder(tmp_path / "clip")
    questions, answers = synth_dir / "dermabench_questions.json", \
        synth_dir / "dermabench_answers.jsonl"
    bench = ["-m", "eval.dermabench", "--questions", str(questions), "--answers", str(answers),
             "--model", f"clip:{clip}", "--limit", "66", "--quiet"]
    launch.run_one_and_two_processes(bench, tmp_path / "one", tmp_path / "two")

    def predictions(run):
        rows = [json.loads(x) for x in (tmp_path / run / "predictions.jsonl").read_text()
                .splitlines()]
        return {(r["image_id"], r["question_id"]): r["text"] for r in rows}
    assert len(predictions("one")) == 66 and predictions("two") == predictions("one")
    assert not list((tmp_path / "two").glob("predictions.rank*"))
    one, two = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("one", "two"))
    assert two["by_question"] == one["by_question"] and two["by_type"] == one["by_type"]
    zeroshot = ["-m", "eval.zeroshot", "--model", str(clip), "--data", str(synth_dir)]
    single = launch.run([sys.executable, *zeroshot])
    double = launch.run([*launch.TORCHRUN_TWO, *zeroshot])
    assert single.returncode == double.returncode == 0, double.stderr[-2000:]
    assert json.loads(double.stdout) == json.loads(single.stdout)     # printed once
