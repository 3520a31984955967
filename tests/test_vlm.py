"""The VLM with a tiny random LM and tokenizer: image embeddings land on <image> positions,
only assistant tokens are labelled, KV cache and no cache agree, save/load is exact, a few
steps lower the loss, reports always validate, and bad input is reported clearly."""
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from dermvlm.choices import options_of
from dermvlm.config import get_config
from dermvlm.errors import DataError, DermvlmError
from dermvlm.report import LesionReport
from dermvlm.synth.writer import generate
from dermvlm.vlm.build import build_vlm, load_vlm_folder, untuned_baseline
from dermvlm.vlm.data import encode_conversation, to_messages
from dermvlm.vlm.infer import describe, generate_batch, generate_ids
from dermvlm.vlm.infer import generate as vlm_generate
from dermvlm.vlm.model import IMAGE_TOKEN
from dermvlm.vlm.train import train_vlm
import launch
from tiny_parts import tiny_lm, tiny_tokenizer, tiny_vision, vanilla_open_clip_folder

SMALL = ["vlm.batch_size=4", "vlm.workers=0", "vlm.warmup_steps=1", "vlm.log_every=1",
         "vlm.max_length=256", "vlm.lr_stage1=0.01", "vlm.lr_stage2=0.005", "vlm.lora_rank=4"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm_synth")
    generate(get_config("tiny", ["synth.n=12", "synth.size=32", "synth.seed=5"]).synth, out,
             progress=False)
    return out


def _parts(seed=0):
    tok = tiny_tokenizer()
    return tiny_lm(tok, seed), tok, tiny_vision(seed)


def _vlm(seed=0, overrides=()):
    lm, tok, vision = _parts(seed)
    return build_vlm(get_config("tiny", SMALL + list(overrides)).vlm, lm=lm, tokenizer=tok,
                     vision=vision)


CONVERSATION = [{"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": "The lesion is red."},
                {"from": "human", "value": "Diagnosis?"}, {"from": "gpt", "value": "Psoriasis."}]


@pytest.mark.parametrize("class_token", [True, False])
def test_image_positions_get_the_projected_embeddings(class_token):
    vlm = _vlm(overrides=[f"vlm.class_token={str(class_token).lower()}"])
    ids, _ = encode_conversation(vlm.tokenizer, to_messages(CONVERSATION),
                                 vlm.num_image_tokens, 256)
    ids = torch.tensor([ids])
    pixels = torch.randn(1, 3, 32, 32)
    embeds = vlm.embed(ids, pixels)
    mask = ids[0] == vlm.image_token_id
    assert int(mask.sum()) == vlm.num_image_tokens == 16 + class_token   # 4 x 4 patches
    assert torch.equal(embeds[0, mask], vlm.image_embeddings(pixels)[0])
    visual = vlm.vision.visual          # the first image token is the projected class token
    with torch.no_grad():
        cls = visual.transformer(visual._embeds(pixels))[:, 0]
        first = vlm.projector(cls)[0]
    assert torch.allclose(embeds[0, mask][0], first, atol=1e-6) == class_token
    text = vlm.lm.get_input_embeddings()(ids)[0, ~mask]
    assert torch.equal(embeds[0, ~mask], text)


def test_only_assistant_tokens_are_labelled():
    vlm = _vlm()
    ids, labels = encode_conversation(vlm.tokenizer, to_messages(CONVERSATION),
                                      vlm.num_image_tokens, 256)
    kept = vlm.tokenizer.decode([t for t, y in zip(ids, labels) if y != -100])
    assert kept == "The lesion is red.<|im_end|>\nPsoriasis.<|im_end|>\n"
    assert all(y == -100 for t, y in zip(ids, labels) if t == vlm.image_token_id)


def test_generation_with_and_without_kv_cache_agree(synth):
    vlm = _vlm().eval()
    image = next((synth / "images").iterdir())
    question = [{"role": "user", "content": "Describe the image."}]
    fixed = dict(max_new_tokens=12, min_new_tokens=12)
    cached = generate_ids(vlm, image, question, use_cache=True, **fixed)
    uncached = generate_ids(vlm, image, question, use_cache=False, **fixed)
    assert cached.shape == (1, 12) and torch.equal(cached, uncached)
    text = vlm_generate(vlm, image, question, **fixed)
    streamed = "".join(vlm_generate(vlm, image, question, stream=True, **fixed))
    assert streamed.strip() == text
    batch = generate_batch(vlm, [image, image], ["Describe the image.", "Describe the image."],
                           max_new_tokens=12, min_new_tokens=12)
    assert batch[0] == batch[1] == text


def test_stages_lower_the_loss_and_save_load_is_exact(synth, tmp_path):
    lm, tok, vision = _parts()
    config = get_config("tiny", SMALL + ["vlm.stage1_steps=12", "vlm.stage2_steps=12",
                                         "vlm.ckpt_every=6"])
    one = train_vlm(config, synth, tmp_path / "s1", stage=1, progress=False,
                    parts=(lm, tok, vision))
    base_lm = tiny_lm(tiny_tokenizer())          # stage 2 reloads the base, adds LoRA
    two = train_vlm(config, synth, tmp_path / "s2", stage=2, init=one["model"],
                    progress=False, parts=(base_lm,))
    for run in ("s1", "s2"):
        losses = [json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl")
                  .read_text().splitlines()]
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, (run, losses)
    trained = load_vlm_folder(two["model"], lm=tiny_lm(tiny_tokenizer()))
    again = load_vlm_folder(two["model"], lm=tiny_lm(tiny_tokenizer()))
    assert (tmp_path / "s2" / "model" / "adapter").is_dir()
    ids, _ = encode_conversation(trained.tokenizer, to_messages(CONVERSATION),
                                 trained.num_image_tokens, 256)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = trained(input_ids=torch.tensor([ids]), pixel_values=pixels).logits
        b = again(input_ids=torch.tensor([ids]), pixel_values=pixels).logits
    assert torch.equal(a, b)
    # the untuned baseline: base LM (no LoRA), a fresh projector drawn the same each time
    base, again = (untuned_baseline(two["model"], lm=tiny_lm(tiny_tokenizer()))
                   for _ in range(2))
    assert not any("lora" in name for name, _ in base.lm.named_parameters())
    text_ids = torch.tensor([ids[-8:]])
    with torch.no_grad():
        plain = tiny_lm(tiny_tokenizer())(input_ids=text_ids).logits     # (1, 8, V)
        assert torch.equal(base.lm(input_ids=text_ids).logits[..., :plain.shape[-1]], plain)
    for fresh, same, tuned in zip(base.projector.parameters(), again.projector.parameters(),
                                  trained.projector.parameters()):
        assert torch.equal(fresh, same) and not torch.equal(fresh, tuned)
    shutil.rmtree(tmp_path / "s2" / "model" / "adapter")
    with pytest.raises(DermvlmError, match="adapter folder .* is missing"):
        load_vlm_folder(two["model"], lm=tiny_lm(tiny_tokenizer()))


def test_resume_is_exact(synth, tmp_path):
    def run(folder, max_steps=None):
        lm, tok, vision = _parts()
        config = get_config("tiny", SMALL + ["vlm.stage1_steps=6", "vlm.ckpt_every=3"])
        return train_vlm(config, synth, folder, stage=1, progress=False, max_steps=max_steps,
                         parts=(lm, tok, vision))
    run(tmp_path / "full")
    run(tmp_path / "split", max_steps=3)
    assert run(tmp_path / "split")["resumed_from"].endswith("step_0000003")
    losses = [[json.loads(x)["loss"] for x in (tmp_path / r / "metrics.jsonl").read_text()
               .splitlines()] for r in ("full", "split")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_report_always_validates_even_from_an_untrained_model(synth):
    vlm = _vlm().eval()
    image = next((synth / "images").iterdir())
    report, raw, repaired = describe(vlm, image, max_new_tokens=20)
    assert isinstance(report, LesionReport)
    LesionReport.model_validate_json(report.model_dump_json())
    assert repaired   # a random model's text is not a valid report: fields were chosen


@pytest.mark.parametrize("kind", ["hf cache", "fastlm tree"])
def test_cached_choice_equals_scoring_each_candidate_from_scratch(synth, kind):
    """turn.choose (one prefill, forced text, the candidates in one pass: batched rows on a
    copied HF cache, or one row with a tree mask on the fast path; branch and bound) picks
    the candidate a full uncached forward pass scores highest, and leaves the turn exactly
    where appending it would."""
    from dermvlm.vlm.constrained import CachedTurn, FastTurn
    from dermvlm.vlm.fastlm import FastLM
    from dermvlm.vlm.infer import load_image, prompt_ids
    vlm = _vlm().eval()
    fast = FastLM(vlm.lm)

    def new_turn(prompt, pixels):
        return CachedTurn(vlm, prompt, pixels) if kind == "hf cache" else \
            FastTurn(vlm, prompt, pixels, fast)
    image = next((synth / "images").iterdir())
    prompt = prompt_ids(vlm, [{"role": "user", "content": "<image>\nReport."}], 0)
    pixels = load_image(vlm, image)
    candidates = ["plaque", "papule", "dark brown", "seborrhoeic keratosis", "red"]

    def joint(text):                                  # uncached: the whole sequence at once
        forced = vlm.tokenizer('{"x":"', add_special_tokens=False)["input_ids"]
        option = vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + forced + option])
        with torch.no_grad():
            logp = vlm.lm(inputs_embeds=vlm.embed(ids, pixels)).logits[0].log_softmax(-1)
        positions = torch.arange(len(prompt) + len(forced) - 1, ids.shape[1] - 1)
        return float(logp[positions, ids[0, positions + 1]].sum())

    expected = max(candidates, key=joint)
    for before in ('{"x":"', ""):                      # forced text inside the pass, or first
        turn = new_turn(prompt, pixels)
        if not before:
            turn.append('{"x":"')
        assert turn.choose(candidates, before) == expected
        reference = new_turn(prompt, pixels)
        reference.append('{"x":"' + expected)
        assert torch.allclose(turn.last, reference.last, atol=1e-4)
        assert turn.length() == reference.length()
        turn.append(" more")                        # the kept branch is the turn's text
        reference.append(" more")
        assert torch.allclose(turn.last, reference.last, atol=1e-4)


@pytest.mark.parametrize("kind", ["hf cache", "fastlm tree"])
def test_a_one_token_favourite_wins_without_a_pass(synth, kind):
    """With no forced text pending, a one-token candidate whose log-probability is the
    highest first-token bound wins outright (its joint is that bound): choose runs no pass,
    the token rides in the next one, and the turn ends where appending it would."""
    from dermvlm.vlm.constrained import CachedTurn, FastTurn
    from dermvlm.vlm.fastlm import FastLM
    from dermvlm.vlm.infer import load_image, prompt_ids
    vlm = _vlm().eval()
    fast = FastLM(vlm.lm)

    def new_turn():
        prompt = prompt_ids(vlm, [{"role": "user", "content": "<image>\nReport."}], 0)
        pixels = load_image(vlm, next((synth / "images").iterdir()))
        turn = CachedTurn(vlm, prompt, pixels) if kind == "hf cache" else \
            FastTurn(vlm, prompt, pixels, fast)
        turn.append('{"x":"')
        turn.length()                                 # the forced text has run
        return turn
    turn = new_turn()
    one_token = {vlm.tokenizer.decode([i]): i for i in range(66, 92)}       # "a" .. "z"
    favourite = max(one_token, key=lambda text: float(turn.last[one_token[text]]))
    candidates = list(one_token) + ["plaque"]
    runs = []
    turn._run = lambda ids, run=turn._run: runs.append(ids) or run(ids)
    turn._expand = lambda *a, expand=turn._expand: runs.append(a) or expand(*a)
    assert turn.choose(candidates) == favourite
    assert runs == []
    reference = new_turn()
    reference.append(favourite)
    assert torch.allclose(turn.last, reference.last, atol=1e-4)
    assert turn.length() == reference.length()


def test_constrained_report_validates_and_needs_no_field_repair(synth):
    vlm = _vlm().eval()
    report, raw, repaired = describe(vlm, next((synth / "images").iterdir()))
    LesionReport.model_validate_json(report.model_dump_json())
    assert json.loads(raw)["differential"] and set(repaired) <= {
        "size_mm_estimate", "malignancy_concern", "suggested_next_step", "differential"}
    with pytest.raises(DermvlmError, match="describe method"):
        describe(vlm, next((synth / "images").iterdir()), method="sample")


def test_describe_abstains_without_running_the_model(synth, monkeypatch):
    """An image its trust file calls out of distribution gets the abstained report; the VLM
    is never asked (generate would fail the test)."""
    from dermvlm.trust import ABSTAIN_MESSAGE
    from dermvlm.vlm import infer
    monkeypatch.setattr(infer, "generate", lambda *a, **k: pytest.fail("model was run"))
    verdict = {"ood_score": 3.2, "threshold": 1.1, "abstained": True}
    report, raw, repaired = describe(_vlm().eval(), next((synth / "images").iterdir()),
                                     ood=verdict)
    assert raw == "" and repaired == [] and report.differential == []
    assert report.out_of_distribution.message == ABSTAIN_MESSAGE


def test_a_case_gives_the_report_its_differential_findings_and_a_concern_floor(synth):
    from dermvlm.case import Case
    from dermvlm.ontology import CONDITIONS
    labels = [c.name for c in CONDITIONS]
    probs = [0.0] * len(labels)
    probs[labels.index("melanocytic nevus")], probs[labels.index("melanoma")] = 0.55, 0.45
    seen = {"lesion_type": "nodule", "colours": ["black", "blue-grey"], "modality": "clinical"}
    case = Case.from_probabilities(probs, labels, threshold=0.3, findings=seen)
    image = next((synth / "images").iterdir())
    report, raw, _ = describe(_vlm().eval(), image, case=case)
    assert [(d.diagnosis, d.likelihood) for d in report.differential][:2] == [
        ("melanocytic nevus", 0.55), ("melanoma", 0.45)]
    assert report.elementary_lesions == ["nodule"] and report.colours == ["black", "blue-grey"]
    # the given fields are forced text: the model wrote the rest after them
    assert '"elementary_lesions":["nodule"],"colours":["black","blue-grey"]' in raw
    assert describe(_vlm().eval(), image, case=case, method="generate")[0].colours == [
        "black", "blue-grey"]
    assert report.malignancy_concern in ("moderate", "high")
    assert report.suggested_next_step in ("dermatology review within weeks",
                                          "urgent referral for biopsy")


@pytest.mark.parametrize("differential, given, expected", [
    # melanoma ranked first: a "low, monitor" report is raised to high concern and biopsy
    ([("melanoma", 0.6), ("melanocytic nevus", 0.2)],
     ("low", "reassurance and routine monitoring"), ("high", "urgent referral for biopsy")),
    # the top diagnosis alone sets it, as SynthDerm's ground-truth reports do
    ([("melanocytic nevus", 0.5), ("melanoma", 0.3)],
     ("low", "reassurance and routine monitoring"), ("low", "reassurance and routine monitoring")),
    # a premalignant top sets a moderate floor
    ([("actinic keratosis", 0.6), ("psoriasis", 0.2), ("melanoma", 0.1)],
     ("low", "reassurance and routine monitoring"),
     ("moderate", "dermatology review within weeks")),
    # never lowered: a more cautious report than its differential stays as it is
    ([("psoriasis", 0.7)], ("high", "urgent referral for biopsy"),
     ("high", "urgent referral for biopsy")),
    # a name outside the ontology sets nothing
    ([("some rash", 0.9)], ("low", "reassurance and routine monitoring"),
     ("low", "reassurance and routine monitoring")),
])
def test_report_concern_and_next_step_follow_its_own_differential(differential, given,
                                                                   expected):
    from dermvlm.vlm.infer import _follow_differential
    fixed = {"differential": [{"diagnosis": d, "likelihood": p} for d, p in differential],
             "malignancy_concern": given[0], "suggested_next_step": given[1]}
    repaired = []
    _follow_differential(fixed, repaired)
    assert (fixed["malignancy_concern"], fixed["suggested_next_step"]) == expected
    assert repaired == [f for f, g, e in zip(("malignancy_concern", "suggested_next_step"),
                                             given, expected) if g != e]


def test_a_diagnosis_named_twice_in_the_differential_keeps_its_first_place():
    from dermvlm.vlm.infer import _differential
    repaired = []
    value = [{"diagnosis": "melanoma", "likelihood": 0.67},
             {"diagnosis": "seborrhoeic keratosis", "likelihood": 0.22},
             {"diagnosis": "Seborrhoeic keratosis ", "likelihood": 0.08}]
    items = _differential(None, None, None, value, [], repaired)
    assert items == [{"diagnosis": "melanoma", "likelihood": 0.67},
                     {"diagnosis": "seborrhoeic keratosis", "likelihood": 0.22}]
    assert repaired == ["differential"]


def test_the_consistency_rule_leaves_synthderm_truth_reports_as_they_are(tmp_path):
    from dermvlm.vlm.infer import _follow_differential
    # 200 reports: a rule reading past the top diagnosis (>= 25 %) changes about 13 % of them
    generate(get_config("tiny", ["synth.n=200", "synth.size=32"]).synth, tmp_path,
             progress=False)
    reports = [json.loads(x)["report"]
               for x in (tmp_path / "reports.jsonl").read_text().splitlines()]
    assert len(reports) == 200
    for report in reports:
        fixed, repaired = dict(report), []
        _follow_differential(fixed, repaired)
        assert fixed == report and repaired == []


@pytest.mark.parametrize("turns, fragment", [
    ([{"from": "human", "value": "no image here"}, {"from": "gpt", "value": "ok"}], "found 0"),
    ([{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "ok"}], "found 2"),
])
def test_conversations_need_exactly_one_image_token(turns, fragment):
    with pytest.raises(DataError, match=fragment):
        to_messages(turns, "item 3")


def test_over_long_prompts_warn_and_drop_history(synth):
    vlm = _vlm().eval()
    image = next((synth / "images").iterdir())
    long_history = [{"role": "user", "content": "Describe the image."}]
    for _ in range(20):
        long_history += [{"role": "assistant", "content": "The lesion is red and scaly. " * 3},
                         {"role": "user", "content": "And?"}]
    with pytest.warns(UserWarning, match="too long"):
        vlm_generate(vlm, image, long_history, max_new_tokens=4)
    with pytest.raises(DermvlmError, match="does not fit"):
        vlm_generate(vlm, image, [{"role": "user", "content": "word " * 400}], max_new_tokens=4)
    with pytest.raises(DermvlmError, match="derm1m.csv: not an image dermvlm can read"):
        vlm_generate(vlm, synth / "derm1m.csv", long_history[:1], max_new_tokens=4)
    assert IMAGE_TOKEN == "<image>"


@pytest.mark.parametrize("class_token", [True, False])
def test_merge_export_gives_a_llava_checkpoint_with_equal_logits(tmp_path, class_token):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dermvlm.vlm.build import apply_lora
    from dermvlm.vlm.export import export_llava, logits_match
    vlm = _vlm(overrides=[f"vlm.class_token={str(class_token).lower()}"])
    vlm.lm = apply_lora(vlm.lm, get_config("tiny", SMALL).vlm)
    torch.manual_seed(1)
    for name, p in vlm.lm.named_parameters():
        if "lora_B" in name:    # a non-zero adapter, so merging matters
            torch.nn.init.normal_(p, std=0.05)
    vlm.eval()
    export_llava(vlm, tmp_path / "llava")
    llava = AutoModelForImageTextToText.from_pretrained(tmp_path / "llava").eval()
    assert type(llava).__name__ == "LlavaForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    assert type(processor).__name__ == "LlavaProcessor"
    inputs = processor(images=Image.new("RGB", (40, 40)), text=f"{IMAGE_TOKEN}\nHi",
                       return_tensors="pt")                 # expands <image> as we do
    assert int((inputs["input_ids"] == vlm.image_token_id).sum()) == vlm.num_image_tokens
    ids, _ = encode_conversation(vlm.tokenizer, to_messages(CONVERSATION),
                                 vlm.num_image_tokens, 256)
    assert logits_match(vlm, llava, torch.tensor([ids]), torch.randn(1, 3, 32, 32)) < 1e-4


def test_chunked_target_only_loss_equals_the_hf_loss():
    vlm = _vlm()
    ids, labels = encode_conversation(vlm.tokenizer, to_messages(CONVERSATION),
                                      vlm.num_image_tokens, 256)
    ids, labels = torch.tensor([ids, ids]), torch.tensor([labels, labels])
    pixels = torch.randn(2, 3, 32, 32)
    ours = vlm(input_ids=ids, pixel_values=pixels, labels=labels).loss
    hf = vlm.lm(inputs_embeds=vlm.embed(ids, pixels), labels=labels).loss
    assert torch.allclose(ours, hf, atol=1e-5)
    from dermvlm.vlm.model import chunked_lm_loss
    hidden = vlm.lm.model(inputs_embeds=vlm.embed(ids, pixels))[0]
    assert torch.allclose(chunked_lm_loss(hidden, labels, vlm.lm.lm_head, chunk=3), ours,
                          atol=1e-5)


def test_sample_weighting_counts_every_conversation_the_same():
    """vlm.loss_weighting: `sample` is the mean of the per-conversation mean losses (a
    one-token answer weighs as much as a long one), `square` lies between it and `token`."""
    from dermvlm.vlm.model import chunked_lm_loss, target_weight
    vlm = _vlm()
    rows = []
    for answer in ("A", "The lesion is a single red patch with blurred margins on the arm."):
        conversation = [CONVERSATION[0], {"from": "gpt", "value": answer}]
        rows.append(encode_conversation(vlm.tokenizer, to_messages(conversation),
                                        vlm.num_image_tokens, 256))
    length = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [0] * (length - len(i)) for i, _ in rows])
    labels = torch.tensor([lab + [-100] * (length - len(lab)) for _, lab in rows])
    pixels = torch.randn(2, 3, 32, 32)
    per_row = [vlm.lm(inputs_embeds=vlm.embed(ids[k:k + 1], pixels[k:k + 1]),
                      labels=labels[k:k + 1]).loss for k in range(2)]
    hidden = vlm.lm.model(inputs_embeds=vlm.embed(ids, pixels))[0]
    loss = {w: chunked_lm_loss(hidden, labels, vlm.lm.lm_head, chunk=3, weighting=w)
            for w in ("token", "sample", "square")}
    assert torch.allclose(loss["sample"], (per_row[0] + per_row[1]) / 2, atol=1e-5)
    assert min(loss["token"], loss["sample"]) < loss["square"] < max(loss["token"],
                                                                     loss["sample"])
    counts = [int((lab[1:] != -100).sum()) for lab in labels]
    assert target_weight(labels, "token") == sum(counts)
    assert target_weight(labels, "sample") == pytest.approx(2.0)
    assert target_weight(labels, "square") == pytest.approx(sum(c ** 0.5 for c in counts))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_image_swap_ablation_asks_about_another_image(synth, monkeypatch):
    from dermvlm.vlm import evaluate
    items = evaluate.choice_items(synth)
    asked = []

    def answer_a(vlm, image, messages, max_new_tokens):
        asked.append((str(image), messages[0]["content"]))
        return "A"
    monkeypatch.setattr(evaluate, "generate", answer_a)
    plain = evaluate.closed_accuracy(None, synth, progress=False)
    assert [a[0] for a in asked] == [i[0] for i in items]
    expected = sum(i[2] == "A" for i in items) / len(items)
    assert plain["accuracy"] == round(expected, 4) and plain["n"] == len(items)
    from sklearn.metrics import balanced_accuracy_score
    for family in plain["per_family"]:                  # "A" every time: recall of A's text
        rows = [dict(options_of(q)) | {"_": a} for _, q, a, f in items
                if f == family]
        reference = balanced_accuracy_score([r[r["_"]] for r in rows], [r["A"] for r in rows])
        assert plain["balanced"][family] == pytest.approx(reference, abs=1e-4)
    asked.clear()
    swapped = evaluate.closed_accuracy(None, synth, progress=False, image_shift=3)
    assert [a[1] for a in asked] == [i[1] for i in items]           # the same questions
    assert all(image != item[0] for (image, _), item in zip(asked, items))
    assert swapped["accuracy"] == plain["accuracy"]                  # "A" ignores the image
    with pytest.raises(DermvlmError, match="at least two images, found 1"):
        evaluate.closed_accuracy(None, synth, limit=1, progress=False, image_shift=3)


def test_reply_scores_equal_the_per_reply_target_loss(synth):
    from dermvlm.vlm import evaluate
    from dermvlm.vlm.infer import load_image
    vlm = _vlm().eval()
    image = evaluate.choice_items(synth)[0][0]
    question, replies = "What colour is the lesion?", ["Red.", "It appears dark brown.", "B"]
    scores = evaluate.reply_scores(vlm, image, question, replies)
    for score, reply in zip(scores, replies):       # one unpadded pass per reply
        ids, labels = encode_conversation(vlm.tokenizer, to_messages(
            [{"from": "human", "value": f"<image>\n{question}"},
             {"from": "gpt", "value": reply}]), vlm.num_image_tokens, 10 ** 6)
        with torch.no_grad():
            loss = vlm(input_ids=torch.tensor([ids]), pixel_values=load_image(vlm, image),
                       labels=torch.tensor([labels])).loss
        targets = sum(label != -100 for label in labels[1:])
        assert score == pytest.approx(-loss.item() * targets, abs=1e-3)


def test_cloze_scoring_asks_the_open_question_and_ranks_the_options_answers(synth,
                                                                           monkeypatch):
    """An oracle that scores the answer sentence of the shown image's true value highest
    gets every question right, and fewer with other images; each question is asked in the
    open training phrasing with one trained answer sentence per option."""
    from dermvlm.vlm import evaluate
    truth = {f"{a['image_id']}.jpg": a for a in map(json.loads, (synth / "attributes.jsonl")
                                                      .read_text().splitlines())}
    keys = {question: (family, key) for family, (question, key, _)
            in evaluate.OPEN_QUESTIONS.items()}
    asked = []

    def oracle(vlm, image, question, replies):
        family, key = keys[question]
        value = truth[Path(image).name][key]
        value = value[0] if isinstance(value, list) else value      # colour: the main one
        asked.append(replies)
        return [float(reply == evaluate.cloze_answer(family, value)) for reply in replies]
    monkeypatch.setattr(evaluate, "reply_scores", oracle)
    items = evaluate.choice_items(synth)
    right = evaluate.cloze_accuracy(None, synth, progress=False)
    assert right["n"] == len(items) and right["accuracy"] == 1.0
    for family in right["per_family"]:                   # the always-most-common baseline
        answers = [dict(options_of(q))[a] for _, q, a, f in items if f == family]
        top = max(answers.count(v) for v in answers) / len(answers)
        assert right["majority"][family] == pytest.approx(top, abs=1e-4)
    for (_, question, _, family), replies in zip(items, asked):
        options = [text for _, text in options_of(question)]
        assert replies == [evaluate.cloze_answer(family, o) for o in options]
    assert evaluate.cloze_answer("lesion_type", "papule") == "Papule."
    assert evaluate.cloze_answer("malignancy", "benign") == "It appears benign."
    other = evaluate.cloze_accuracy(None, synth, progress=False, image_shift=1)
    assert other["accuracy"] < 1.0


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_cloze_balanced_accuracy_equals_sklearn_and_flattens_a_prior(synth, monkeypatch):
    """A model that always prefers one answer per family scores its base rate in accuracy but
    1 / (number of distinct truths) in balanced accuracy; any scorer's balanced accuracy per
    family equals sklearn's balanced_accuracy_score on the same choices."""
    from sklearn.metrics import balanced_accuracy_score

    from dermvlm.vlm import evaluate
    items = evaluate.choice_items(synth)

    def chosen_and_truth(scorer):
        out = {}
        for image, question, answer, family in items:
            options = options_of(question)
            scores = scorer(None, image, None, [evaluate.cloze_answer(family, t)
                                                for _, t in options])
            best = max(zip(scores, (letter for letter, _ in options)))[1]
            out.setdefault(family, ([], []))
            out[family][0].append(dict(options)[best])
            out[family][1].append(dict(options)[answer])
        return out

    def prior(vlm, image, question, replies):            # "benign" whenever offered
        return [float(reply == evaluate.cloze_answer("malignancy", "benign")) - len(reply)
                / 100 for reply in replies]

    def arbitrary(vlm, image, question, replies):        # depends on image and reply
        return [float((len(reply) * 7 + len(Path(image).name) * 3 + i) % 5)
                for i, reply in enumerate(replies)]
    for scorer in (prior, arbitrary):
        monkeypatch.setattr(evaluate, "reply_scores", scorer)
        result = evaluate.cloze_accuracy(None, synth, progress=False)
        for family, (chosen, truth) in chosen_and_truth(scorer).items():
            reference = balanced_accuracy_score(truth, chosen)
            assert result["balanced"][family] == pytest.approx(reference, abs=1e-4)
        if scorer is prior:                              # benign is always an option
            chosen, truth = chosen_and_truth(prior)["malignancy"]
            assert set(chosen) == {"benign"} and len(set(truth)) > 1
            assert result["per_family"]["malignancy"] == result["majority"]["malignancy"]
            assert result["balanced"]["malignancy"] == pytest.approx(1 / len(set(truth)),
                                                                      abs=1e-4)


def test_image_norm_weight_pulls_image_tokens_to_the_lm_embedding_scale(synth, tmp_path):
    pixels = torch.randn(2, 3, 32, 32)

    def log_ratio(weight):
        lm, tok, vision = _parts()
        config = get_config("tiny", SMALL + ["vlm.stage1_steps=10", "vlm.ckpt_every=10",
                                             f"vlm.image_norm_weight={weight}"])
        out = train_vlm(config, synth, tmp_path / f"w{weight}", stage=1, progress=False,
                        parts=(lm, tok, vision))
        vlm = load_vlm_folder(out["model"], lm=tiny_lm(tiny_tokenizer()))
        with torch.no_grad():
            images = vlm.image_embeddings(pixels)
            target = vlm.lm.get_input_embeddings().weight.norm(dim=-1).mean()
            assert vlm.image_norm_penalty(images / images.norm(dim=-1, keepdim=True) *
                                          target).item() == pytest.approx(0, abs=1e-8)
        return vlm.image_norm_penalty(images).item()
    assert log_ratio(1.0) < 0.6 * log_ratio(0.0)     # 3.9 vs 8.0 when written


def test_named_value_reads_the_first_value_a_reply_names():
    from dermvlm.vlm.evaluate import OPEN_QUESTIONS, named_value
    values = {family: spec[2] for family, spec in OPEN_QUESTIONS.items()}
    assert named_value("It looks premalignant and should be reviewed.",
                       values["malignancy"]) == "premalignant"
    assert named_value("Features suggest a malignant lesion.", values["malignancy"]) == \
        "malignant"
    assert named_value("The lesion is dark brown and black.", values["colour"]) == "dark brown"
    assert named_value("There are a few lesions.", values["count"]) == "few"
    assert named_value("Two small plaques.", values["lesion_type"]) == "plaque"
    assert named_value("I cannot tell.", values["lesion_type"]) is None


def test_open_questions_score_the_reply_against_the_shown_images_attributes(synth,
                                                                            monkeypatch):
    """An oracle that answers from the attributes of the image it is shown scores 1 on the
    right images and less when shown other images; the majority baseline is computed."""
    from dermvlm.vlm import evaluate
    truth = {f"{a['image_id']}.jpg": a for a in map(json.loads, (synth / "attributes.jsonl")
                                                      .read_text().splitlines())}
    keys = {question: key for question, key, _ in evaluate.OPEN_QUESTIONS.values()}

    def oracle(vlm, image, messages, max_new_tokens):
        value = truth[Path(image).name][keys[messages[0]["content"]]]
        return f"It is {value[0] if isinstance(value, list) else value}."
    monkeypatch.setattr(evaluate, "generate", oracle)
    right = evaluate.open_accuracy(None, synth, progress=False)
    assert right["n_images"] == len(truth)
    assert all(f["accuracy"] == 1.0 and f["unnamed"] == 0 for f in right["per_family"].values())
    assert all(0 < f["majority"] <= 1.0 for f in right["per_family"].values())
    other = evaluate.open_accuracy(None, synth, progress=False, image_shift=1)
    assert other["per_family"]["diagnosis"]["accuracy"] < 1.0


@pytest.mark.parametrize("weighting", ["token", "sample"])
def test_gradient_accumulation_matches_one_big_batch(synth, tmp_path, weighting):
    """Every target token weighs the same (or, `sample`, every conversation): 2 micro-
    batches of 2 train like one batch of 4 (a mean per micro-batch would weigh the tokens of
    the shorter one more)."""
    def losses(accum):
        lm, tok, vision = _parts()
        config = get_config("tiny", SMALL + ["vlm.stage1_steps=4", "vlm.ckpt_every=4",
                                             f"vlm.grad_accum={accum}",
                                             f"vlm.loss_weighting={weighting}"])
        train_vlm(config, synth, tmp_path / f"a{accum}", stage=1, progress=False,
                  parts=(lm, tok, vision))
        rows = [json.loads(x) for x in (tmp_path / f"a{accum}" / "metrics.jsonl").read_text()
                .splitlines()]
        return [r["loss"] for r in rows], [r["target_weight"] for r in rows]
    (one, one_tokens), (two, two_tokens) = losses(1), losses(2)
    assert one_tokens == two_tokens
    assert two == pytest.approx(one, abs=1e-4)


def _stage1_args_with_saved_parts(synth, tmp_path, steps, ckpt_every):
    """train.vlm stage-1 arguments (no --out) with a tiny LM and a vanilla open_clip tower
    saved under tmp_path, for runs in other processes."""
    tok = tiny_tokenizer()
    tiny_lm(tok).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    vanilla_open_clip_folder(tmp_path / "clip")
    overrides = SMALL + [f"vlm.stage1_steps={steps}", f"vlm.ckpt_every={ckpt_every}",
                         f"vlm.lm={tmp_path / 'lm'}", f"vlm.vision={tmp_path / 'clip'}"]
    return ["--stage", "1", "--data", str(synth), "--preset", "tiny", "--quiet",
            *[f"--set={o}" for o in overrides]]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate launch"])
def test_ddp_two_cpu_processes_match_one_process(synth, tmp_path, launcher):
    """torchrun or accelerate launch, gloo: stage 1 with the global batch split over 2 ranks
    logs the single-process loss and target weight (token count) at every step."""
    args = _stage1_args_with_saved_parts(synth, tmp_path, steps=3, ckpt_every=3)
    launch.run_one_and_two_processes(["-m", "train.vlm", *args], tmp_path / "one",
                                     tmp_path / "two", launch.TORCHRUN_TWO
                                     if launcher == "torchrun" else launch.accelerate_two())
    one, two = ([json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text()
                 .splitlines()] for run in ("one", "two"))
    assert [r["target_weight"] for r in two] == [r["target_weight"] for r in one]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-4)


def _losses(run):
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_fsdp_on_two_ranks_matches_one_process_and_resumes_at_another_world_size(synth,
                                                                                 tmp_path):
    """torchrun, gloo, stage 2 (LoRA + projector): the LM's layers sharded over 2 ranks
    (vlm.parallel=fsdp) log the single-process losses; a 2-rank checkpoint resumes in one
    process and continues the same curve; the model folder it writes loads as any other."""
    args = _stage1_args_with_saved_parts(synth, tmp_path, steps=1, ckpt_every=1)
    assert launch.run([sys.executable, "-m", "train.vlm", *args, "--out",
                       str(tmp_path / "s1")]).returncode == 0
    stage2 = list(args)
    stage2[stage2.index("--stage") + 1] = "2"
    stage2 += ["--init", str(tmp_path / "s1" / "model"), "--set=vlm.stage2_steps=4",
               "--set=vlm.ckpt_every=2", "--set=vlm.log_every=1",
               "--set=vlm.lora_dropout=0"]          # dropout masks differ by rank
    launch.run_one_and_two_processes(["-m", "train.vlm", *stage2, "--set=vlm.parallel=fsdp"],
                                     tmp_path / "one", tmp_path / "two")
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == 4 and two == pytest.approx(one, abs=1e-4)
    # resume the 2-rank run's step-2 checkpoint in one process
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two" / "checkpoints" / "step_0000002",
                    resumed / "checkpoints" / "step_0000002")
    (resumed / "checkpoints" / "latest").write_text("step_0000002")
    done = launch.run([sys.executable, "-m", "train.vlm", *stage2, "--out", str(resumed)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert _losses(resumed) == pytest.approx(one[2:], abs=1e-4)
    from safetensors.torch import load_file
    ours, theirs = (load_file(tmp_path / r / "model" / "adapter" / "adapter_model.safetensors")
                    for r in ("one", "two"))
    assert ours.keys() == theirs.keys() and all(
        torch.allclose(ours[k], theirs[k], atol=1e-5) for k in ours)
    from dermvlm.vlm.export import export_llava                # merge-export reads it
    from dermvlm.vlm.model import DermVLM
    exported = export_llava(DermVLM.from_pretrained(tmp_path / "two" / "model"),
                            tmp_path / "llava")
    assert (exported / "config.json").is_file()


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(synth, tmp_path,
                                                                   monkeypatch):
    from dermvlm.training import TrainingError
    from dermvlm.vlm import model
    forward, calls = model.DermVLM.forward, [0]

    def nan_from_third_step(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls[0] += 1
        return model.LossOutput(loss=out.loss * float("nan")) if calls[0] >= 3 else out
    monkeypatch.setattr(model.DermVLM, "forward", nan_from_third_step)
    config = get_config("tiny", SMALL + ["vlm.stage1_steps=6", "vlm.ckpt_every=2"])
    with pytest.raises(TrainingError, match=r"loss became nan at step 3; .*step_0000002$"):
        train_vlm(config, synth, tmp_path, stage=1, progress=False, parts=_parts())
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    monkeypatch.setattr(model.DermVLM, "forward", forward)        # the run resumes from it
    resumed = train_vlm(config, synth, tmp_path, stage=1, progress=False, parts=_parts())
    assert resumed["resumed_from"].endswith("step_0000002") and resumed["steps"] == 6


def test_nan_loss_on_one_ddp_rank_stops_every_rank_with_a_message(synth, tmp_path):
    """torchrun, gloo: rank 1's loss turns NaN at step 3; both ranks stop at that step (none
    waits in the gradient sync), rank 0 says which, and its step-2 checkpoint is kept."""
    args = _stage1_args_with_saved_parts(synth, tmp_path, steps=6, ckpt_every=2)
    done = launch.run([*launch.TORCHRUN_TWO, str(launch.ROOT / "tests" / "nan_on_one_rank.py"),
                       "1", "3", *args, "--out", str(tmp_path / "run")])
    assert done.returncode != 0
    assert "loss became non-finite at step 3 on 1 of 2 ranks; stopped. Last good checkpoint: " \
        f"{tmp_path / 'run' / 'checkpoints' / 'step_0000002'}" in done.stderr, done.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_0000002"


def test_eval_vqa_names_a_missing_data_file_before_loading_the_model(tmp_path, capsys):
    from eval.vqa import main as eval_vqa
    args = ["--model", str(tmp_path / "no_model"), "--data", str(tmp_path)]
    assert eval_vqa(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("vqa_llava.json: not found; --data must be a SynthDerm folder written "
                        "by `dermvlm synth`") and len(err.splitlines()) == 1
    assert eval_vqa(args + ["--limit", "0"]) == 2
    assert "attributes.jsonl: not found" in capsys.readouterr().err


def test_option_first_answers_name_the_option_then_its_letter(tmp_path):
    from dermvlm.vlm.evaluate import choice_items
    overrides = ["synth.n=12", "synth.size=32", "synth.seed=5"]
    generate(get_config("tiny", overrides + ["synth.letter_answers=letter"]).synth,
             tmp_path / "letter", progress=False)
    generate(get_config("tiny", overrides).synth, tmp_path / "first", progress=False)
    plain, first = choice_items(tmp_path / "letter"), choice_items(tmp_path / "first")
    assert len(first) == len(plain) > 0
    records = {r["id"]: r for r in json.loads((tmp_path / "first/vqa_llava.json").read_text())}
    for (_, question, letter, family), (_, question2, letter2, family2) in zip(plain, first):
        assert (letter, family) == (letter2, family2)        # same draws, same truth
        assert question2 == question.replace("Answer with the option's letter.",
                                             "Answer with the option and its letter.")
    for record in records.values():
        question, reply = (t["value"] for t in record["conversations"][:2])
        if "its letter" in question:
            letter = reply[-3]
            assert reply == f"{dict(options_of(question))[letter].capitalize()} ({letter})."


def test_a_lettered_answer_without_a_letter_is_named(tmp_path):
    from dermvlm.vlm.evaluate import choice_items
    record = {"id": "x_c1", "image": "images/x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhich primary lesion is shown?\nA. papule\n"
                                   "B. plaque\nAnswer with the option's letter."},
        {"from": "gpt", "value": "Plaque"}]}
    (tmp_path / "vqa_llava.json").write_text(json.dumps([record]))
    with pytest.raises(DermvlmError, match=r"record 'x_c1' answers .*'Plaque'"):
        choice_items(tmp_path)


def test_a_warm_start_realigns_a_trained_vlm_to_a_new_tower_then_continues_its_adapter(
        synth, tmp_path):
    from safetensors.torch import load_file
    lm, tok, vision = _parts()
    config = get_config("tiny", SMALL + ["vlm.stage1_steps=3", "vlm.stage2_steps=3",
                                         "vlm.ckpt_every=3"])
    one = train_vlm(config, synth, tmp_path / "s1", stage=1, progress=False,
                    parts=(lm, tok, vision))
    two = train_vlm(config, synth, tmp_path / "s2", stage=2, init=one["model"],
                    progress=False, parts=(tiny_lm(tiny_tokenizer()),))
    clip = vanilla_open_clip_folder(tmp_path / "clip")        # another tower, same width
    # ... and another pooling: the projector's shape does not depend on it
    warm = get_config("tiny", SMALL + ["vlm.stage1_steps=3", "vlm.stage2_steps=3",
                                       "vlm.ckpt_every=3", f"vlm.vision={clip}",
                                       "vlm.token_pool=2"])
    again = train_vlm(warm, synth, tmp_path / "w1", stage=1, init=two["model"],
                      progress=False, parts=(tiny_lm(tiny_tokenizer()),))
    tower = load_file(Path(again["model"]) / "vision.safetensors")
    new_tower = load_file(clip / "open_clip_model.safetensors")
    assert all(torch.equal(v, new_tower[k]) for k, v in tower.items() if k in new_tower)
    pooled, unpooled = (json.loads((Path(r["model"]) / "dermvlm_vlm.json").read_text())
                        for r in (again, two))
    side = math.isqrt(tower["visual.positional_embedding"].shape[0] - 1)   # the new grid
    extra = int(pooled["vlm"]["class_token"])
    assert (pooled["vlm"]["token_pool"], unpooled["vlm"]["token_pool"]) == (2, 1)
    assert pooled["num_image_tokens"] == math.ceil(side / 2) ** 2 + extra

    def adapter(run):
        return load_file(Path(run["model"]) / "adapter/adapter_model.safetensors")

    def projector(run):
        return load_file(Path(run["model"]) / "projector.safetensors")
    assert all(torch.equal(v, adapter(two)[k]) for k, v in adapter(again).items())  # frozen
    assert not all(torch.equal(v, projector(two)[k]) for k, v in projector(again).items())
    more = train_vlm(warm, synth, tmp_path / "w2", stage=2, init=again["model"],
                     progress=False, parts=(tiny_lm(tiny_tokenizer()),))
    assert adapter(more).keys() == adapter(two).keys()          # the same LoRA, not a second
    assert not all(torch.equal(v, adapter(two)[k]) for k, v in adapter(more).items())


def test_a_warm_start_onto_a_wider_tower_keeps_the_adapter_and_starts_a_fresh_projector(
        synth, tmp_path):
    from safetensors.torch import load_file
    lm, tok, vision = _parts()
    config = get_config("tiny", SMALL + ["vlm.stage1_steps=2", "vlm.stage2_steps=2",
                                         "vlm.ckpt_every=2"])
    one = train_vlm(config, synth, tmp_path / "s1", stage=1, progress=False,
                    parts=(lm, tok, vision))
    two = train_vlm(config, synth, tmp_path / "s2", stage=2, init=one["model"],
                    progress=False, parts=(tiny_lm(tiny_tokenizer()),))
    clip = vanilla_open_clip_folder(tmp_path / "clip", width=96)
    warm = get_config("tiny", SMALL + ["vlm.stage1_steps=2", "vlm.ckpt_every=2",
                                       f"vlm.vision={clip}"])
    again = train_vlm(warm, synth, tmp_path / "w1", stage=1, init=two["model"],
                      progress=False, parts=(tiny_lm(tiny_tokenizer()),))
    projector = load_file(Path(again["model"]) / "projector.safetensors")
    assert projector["0.weight"].shape[1] == 96
    adapter = [load_file(Path(r["model"]) / "adapter/adapter_model.safetensors")
               for r in (two, again)]
    assert all(torch.equal(v, adapter[0][k]) for k, v in adapter[1].items())


def test_the_exported_chat_template_takes_typed_image_content_as_trained():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from dermvlm.vlm.export import multimodal_chat_template
    chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
              "message['content'] + '<|im_end|>\\n'}}{% endfor %}")
    render = ImmutableSandboxedEnvironment().from_string(multimodal_chat_template(chatml)).render
    typed = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    assert render(messages=typed) == render(messages=[{"role": "user",
                                                       "content": f"{IMAGE_TOKEN}\nHi"}]) \
        == f"<|im_start|>user\n{IMAGE_TOKEN}\nHi<|im_end|>\n"
    assert multimodal_chat_template("no content here") == "no content here"


def test_describe_cli_reports_a_folder_keeps_going_and_resumes(synth, tmp_path, capsys):
    """`dermvlm describe FOLDER --out F`: one valid report line per readable image, the
    unreadable one named with its reason (exit 1), and a second run adds nothing twice."""
    from dermvlm.cli import main
    tok = tiny_tokenizer()
    tiny_lm(tok).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    vanilla_open_clip_folder(tmp_path / "clip")
    config = get_config("tiny", SMALL + [f"vlm.lm={tmp_path / 'lm'}",
                                         f"vlm.vision={tmp_path / 'clip'}"]).vlm
    build_vlm(config).save_pretrained(tmp_path / "vlm")
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((synth / "images").iterdir())[:2]:
        shutil.copy(path, folder / path.name)
    (folder / "zz_broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "reports.jsonl"
    args = ["describe", str(folder), "--model", str(tmp_path / "vlm"), "--out", str(out),
            "--quiet"]
    assert main(args) == 1
    assert "zz_broken.jpg" in capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(line["image"]).name for line in lines] == sorted(
        p.name for p in folder.iterdir())[:2]
    for line in lines:
        LesionReport.model_validate(line["report"])
    assert main(args) == 1                       # only the broken image is tried again
    assert len(out.read_text().splitlines()) == 2
    out.write_text(out.read_text() + "{not json\n")
    assert main(args) == 2
    assert f"{out}, line 3" in capsys.readouterr().err
