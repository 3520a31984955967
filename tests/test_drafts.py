"""Decoding with drafts (dermvlm.vlm.drafts, fastlm.decode): the drafts looked up, greedy
replies identical to plain decoding however good or bad the drafts, fewer passes when they
are good, sampling that keeps the model's distribution, and the draft store's file."""
import json

import pytest
import torch
from test_fastlm import _lm
from test_vlm import _vlm, synth  # noqa: F401  (a tiny VLM and SynthDerm images)

from dermvlm.errors import DataError
from dermvlm.vlm import infer
from dermvlm.vlm.drafts import DRAFTS_FILE, FORMAT, Drafter, NgramTable, read_drafts, store_for
from dermvlm.vlm.fastlm import FastLM, _verify, decode, for_vlm


def test_the_longest_matching_suffix_drafts_the_context_before_the_store():
    store = NgramTable()
    store.add([5, 6, 7, 8, 9])
    drafter = Drafter([1, 2, 3, 9, 2, 3], store)
    assert drafter.propose(2) == [9, 2]            # "2 3" was followed by "9 2" earlier
    drafter.append(6)                              # "... 3 6": only the store knows "6"
    assert drafter.propose(3) == [7, 8, 9]
    drafter.append(4)                              # nobody has seen "4"
    assert drafter.propose(3) == [] and drafter.propose(0) == []


def _decode(fast, prompt, new, drafter=None, **sampling):
    cache = fast.new_cache(1, prompt.shape[1] + new)
    logits = fast.logits(fast.forward(cache, fast.embed(prompt))[:, -1])
    return [int(t) for t in decode(fast, cache, logits, new, -1, drafter=drafter, **sampling)]


@pytest.mark.parametrize("drafts", ["the reply itself", "noise", "none"])
def test_greedy_replies_do_not_depend_on_the_drafts(drafts):
    fast = FastLM(_lm("llama"))
    fast.draft_tokens = 4
    prompt = torch.randint(0, 120, (1, 9), generator=torch.Generator().manual_seed(2))
    plain = _decode(fast, prompt, 20)
    store = NgramTable()
    if drafts == "the reply itself":
        store.add(prompt[0].tolist()[-3:] + plain)
    elif drafts == "noise":
        store.add(torch.randint(0, 120, (400,), generator=torch.Generator().manual_seed(4))
                  .tolist())
    passes = []
    original = fast.forward
    fast.forward = lambda cache, embeds, **kw: passes.append(1) or original(cache, embeds, **kw)
    drafted = _decode(fast, prompt, 20, Drafter(prompt[0].tolist(), store))
    assert drafted == plain
    if drafts == "the reply itself":
        assert len(passes) <= 1 + 20 // 5 + 1      # the prefill, then five tokens a pass


def test_drafted_sampling_keeps_the_models_distribution():
    """One draft token d: the first token is d with the model's p(d) and otherwise drawn
    from p without d, so it is distributed as p; after a kept d comes a draw from the next
    position's distribution."""
    rows = torch.tensor([[1.0, 0.2, -0.5, 0.7, 0.0], [0.0, 2.0, 0.1, -1.0, 0.5]])
    first_p, second_p = rows.softmax(-1)
    generator = torch.Generator().manual_seed(0)
    draws = 20_000
    first, second = torch.zeros(5), torch.zeros(5)
    for _ in range(draws):
        kept, after = _verify(rows.clone(), [3], 1.0, 1.0, generator)
        first[3 if kept else after] += 1
        if kept:
            second[after] += 1
    assert (first / draws - first_p).abs().max() < 0.012
    assert (second / second.sum() - second_p).abs().max() < 0.02


def test_sampled_decoding_with_drafts_stays_in_the_nucleus():
    fast = FastLM(_lm("llama"))
    fast.draft_tokens = 4
    prompt = torch.randint(0, 120, (1, 6), generator=torch.Generator().manual_seed(5))
    store = NgramTable()
    store.add(list(range(120)))
    tokens = _decode(fast, prompt, 16, Drafter(prompt[0].tolist(), store), temperature=1.0,
                     top_p=1e-6, generator=torch.Generator().manual_seed(1))
    assert tokens == _decode(fast, prompt, 16)     # top_p -> 0 keeps only the argmax


@pytest.fixture()
def vlm():
    return _vlm().eval()


def test_a_vlm_reply_is_unchanged_by_drafts_and_joins_the_store(vlm, synth):
    image = next((synth / "images").iterdir())
    question = [{"role": "user", "content": "Describe the image."}]
    vlm.draft_decode = False
    plain = infer.generate(vlm, image, question, max_new_tokens=16)
    for_vlm(vlm).draft_tokens = 4
    vlm.draft_decode = True
    assert store_for(vlm).tokens == 0
    assert infer.generate(vlm, image, question, max_new_tokens=16) == plain
    assert store_for(vlm).tokens > 0                # later replies draft from this one


def test_a_draft_store_is_read_with_its_folder_or_named_when_malformed(tmp_path):
    assert read_drafts(tmp_path) == []
    (tmp_path / DRAFTS_FILE).write_text(json.dumps({"format": FORMAT, "replies": ["a b"]}))
    assert read_drafts(tmp_path) == ["a b"]
    (tmp_path / DRAFTS_FILE).write_text('{"replies": "a b"}')
    with pytest.raises(DataError, match=DRAFTS_FILE):
        read_drafts(tmp_path)
    (tmp_path / DRAFTS_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not a JSON draft store"):
        read_drafts(tmp_path)


def test_the_build_step_writes_a_store_the_folder_then_loads(tmp_path):
    """python -m train.drafts on a copy of the embedded default: the assistant's replies on
    a SynthDerm image, read back with the VLM folder."""
    import shutil

    from dermvlm import embedded
    from dermvlm.vlm.model import DermVLM
    from train import drafts
    if not (embedded.DEFAULT_DIR / "manifest.json").is_file():
        pytest.skip("no embedded default in this checkout")
    shutil.copytree(embedded.DEFAULT_DIR, tmp_path / "default")
    (tmp_path / "default" / "vlm" / DRAFTS_FILE).unlink()
    drafts.main(["--vlm", str(tmp_path / "default/vlm"), "--clip",
                 str(tmp_path / "default/clip"), "--images", "2", "--quiet"])
    replies = read_drafts(tmp_path / "default/vlm")
    assert 0 < len(replies) <= len(drafts.QUESTIONS) and all(r.strip() for r in replies)
    assert DermVLM.from_pretrained(tmp_path / "default/vlm").draft_texts == replies
    with pytest.raises(SystemExit):
        drafts.main(["--vlm", str(tmp_path / "default/vlm")])      # --clip missing
    with pytest.raises(SystemExit, match="2"):                      # one line, exit 2
        drafts.main(["--vlm", str(tmp_path / "none"), "--clip", str(tmp_path / "none")])


def test_real_images_for_a_store_are_picked_by_name_not_folder_order(tmp_path):
    from PIL import Image

    from train.drafts import real_images
    for label, name, shade in (("nevus", "b.jpg", 10), ("melanoma", "a.jpg", 200),
                               ("nevus", "c.jpg", 90)):
        (tmp_path / label).mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (shade, shade, shade)).save(tmp_path / label / name)
    picked = [image.getpixel((0, 0))[0] for image in real_images(tmp_path, 2)]
    assert len(picked) == 2 and len(set(picked)) == 2
    (tmp_path / "nevus" / "b.jpg").rename(tmp_path / "melanoma" / "b.jpg")   # relabelled
    assert [image.getpixel((0, 0))[0] for image in real_images(tmp_path, 2)] == picked
