"""dermvlm's decode loop (dermvlm.vlm.fastlm) against the HF forward and `generate` it
replaces: the same logits, the same greedy tokens, left-padded batches, a chat's cached
prefix, streaming, and int8 weights close to fp32."""
import pytest
import torch
from PIL import Image
from test_vlm import _vlm, synth  # noqa: F401  (a tiny VLM and SynthDerm images)
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from dermvlm.errors import DermvlmError
from dermvlm.vlm import infer
from dermvlm.vlm.fastlm import (DYNAMIC_MAX_TOKENS, INT8_MAX_TOKENS, FastLM, _kernel_missing,
                                 choose_next, decode, for_vlm, resolve_quantize, unsupported)

SHAPE = dict(vocab_size=120, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def _lm(family, seed=0):
    torch.manual_seed(seed)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**SHAPE, rope_theta=500.0)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**SHAPE)).eval()      # q, k, v with biases


def _greedy(fast, ids, new, batch_valid=None):
    cache = fast.new_cache(ids.shape[0], ids.shape[1] + new)
    logits = fast.logits(fast.forward(cache, fast.embed(ids), valid=batch_valid)[:, -1])
    return torch.stack(list(decode(fast, cache, logits, new, -1, suppress=fast.suppressed())), 1)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_logits_and_greedy_tokens_equal_hf(family):
    lm = _lm(family)
    ids = torch.randint(0, 120, (1, 30), generator=torch.Generator().manual_seed(1))
    fast = FastLM(lm)
    cache = fast.new_cache(1, 40)
    with torch.no_grad():
        expected = lm(ids).logits
        got = fast.logits(fast.forward(cache, fast.embed(ids[:, :20])))
        step = fast.logits(fast.forward(cache, fast.embed(ids[:, 20:21])))   # one token
        rest = fast.logits(fast.forward(cache, fast.embed(ids[:, 21:])))     # a few
    assert torch.allclose(got, expected[:, :20], atol=1e-5)
    assert torch.allclose(step, expected[:, 20:21], atol=1e-5)
    assert torch.allclose(rest, expected[:, 21:], atol=1e-5)
    reference = lm.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)
    assert _greedy(fast, ids, 24).tolist() == reference[:, 30:].tolist()


def test_generation_config_is_honoured_or_left_to_hf():
    """suppress_tokens are never chosen, as in HF generate; settings the loop does not
    apply (a repetition penalty) send the model to HF."""
    lm = _lm("llama")
    ids = torch.randint(0, 120, (1, 10), generator=torch.Generator().manual_seed(3))
    fast = FastLM(lm)
    first = int(_greedy(fast, ids, 1)[0, 0])
    lm.generation_config.suppress_tokens = [first]
    reference = lm.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    got = _greedy(fast, ids, 8)
    assert first not in got.tolist()[0] and got.tolist() == reference[:, 10:].tolist()
    lm.generation_config.repetition_penalty = 1.3
    assert "generation settings" in unsupported(lm)


def test_left_padded_batch_equals_each_row_alone():
    lm = _lm("llama")
    fast = FastLM(lm)
    long, short = torch.randint(0, 120, (1, 12)), torch.randint(0, 120, (1, 7))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1)])
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, :5] = False
    together = _greedy(fast, batch, 10, valid)
    assert together[0].tolist() == _greedy(fast, long, 10)[0].tolist()
    assert together[1].tolist() == _greedy(fast, short, 10)[0].tolist()


@pytest.mark.parametrize("quantize, tolerance", [("int8", 0.05), ("dynamic", 0.1)])
def test_quantized_weights_stay_close_to_fp32(quantize, tolerance):
    """Quantized weights are an approximation: one step's logits within a fraction of their
    spread; passes longer than the quantized kernels' limit run the fp32 weights exactly."""
    lm = _lm("llama")
    length = max(INT8_MAX_TOKENS, DYNAMIC_MAX_TOKENS) + 8
    ids = torch.randint(0, 120, (1, length), generator=torch.Generator().manual_seed(2))
    exact, approx = FastLM(lm), FastLM(lm, quantize=quantize)
    prefill = [f.logits(f.forward(f.new_cache(1, length), f.embed(ids)))
               for f in (exact, approx)]
    assert torch.equal(prefill[0], prefill[1])  # a long pass: both run the fp32 weights
    step = []
    for f in (exact, approx):
        cache = f.new_cache(1, length)
        f.forward(cache, f.embed(ids[:, :-1]))
        step.append(f.logits(f.forward(cache, f.embed(ids[:, -1:])))[0, -1])
    assert (step[0] - step[1]).abs().max() < tolerance * step[0].std()
    assert not torch.equal(step[0], step[1])     # the quantized weights were used
    with pytest.raises(DermvlmError, match="quantize must be"):
        FastLM(lm, quantize="int4")


def test_auto_quantize_is_dynamic_int8_on_a_cpu_that_has_the_kernel():
    expected = None if _kernel_missing("dynamic") else "dynamic"
    assert resolve_quantize("auto", "cpu") == expected
    assert resolve_quantize("auto", "cuda") is None            # a GPU decodes its own weights
    assert resolve_quantize("none", "cpu") is None and resolve_quantize(None, "cpu") is None
    assert resolve_quantize("int8", "cpu") == "int8"


def test_sampling_follows_temperature_and_top_p():
    logits = torch.tensor([[4.0, 3.0, -10.0, -10.0]])
    assert choose_next(logits).tolist() == [0]
    draws = {int(choose_next(logits, 1.0, 0.5, torch.Generator().manual_seed(s)))
             for s in range(30)}
    assert draws == {0}                           # top_p 0.5 keeps only the likeliest token
    wide = {int(choose_next(logits, 1.0, 1.0, torch.Generator().manual_seed(s)))
            for s in range(60)}
    assert wide == {0, 1}


def test_unsupported_models_fall_back_to_hf():
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert "gpt2" in unsupported(gpt2)
    with pytest.raises(DermvlmError, match="cannot run"):
        FastLM(gpt2)


@pytest.fixture()
def vlm():
    return _vlm().eval()


@pytest.fixture()
def image(synth):
    return next((synth / "images").iterdir())


def test_vlm_replies_equal_hf_generate(vlm, image):
    """generate, streaming and batched generation answer as HF generate does."""
    questions = ["Describe the image.", "What is the most likely diagnosis?"]
    fast = [infer.generate(vlm, image, [{"role": "user", "content": q}], max_new_tokens=12)
            for q in questions]
    streamed = "".join(infer.generate(vlm, image, [{"role": "user", "content": questions[0]}],
                                      max_new_tokens=12, stream=True)).strip()
    batched = infer.generate_batch(vlm, [image, image], questions, max_new_tokens=12)
    vlm.fast_decode = False
    hf = [infer.generate(vlm, image, [{"role": "user", "content": q}], max_new_tokens=12)
          for q in questions]
    assert fast == hf and streamed == hf[0]
    assert batched == infer.generate_batch(vlm, [image, image], questions, max_new_tokens=12)


def test_a_chat_turn_runs_only_its_new_tokens(vlm, image):
    """The second turn reuses the first turn's cache (the image, the question and the reply)
    and answers as a cold start would."""
    first = [{"role": "user", "content": "Describe the image."}]
    reply = infer.generate(vlm, image, first, max_new_tokens=8)
    second = first + [{"role": "assistant", "content": reply},
                      {"role": "user", "content": "What is the most likely diagnosis?"}]
    fast = for_vlm(vlm)
    ran = []
    original = fast.forward
    fast.forward = lambda cache, embeds, **kw: ran.append(embeds.shape[1]) or \
        original(cache, embeds, **kw)
    warm = infer.generate(vlm, image, second, max_new_tokens=8)
    prompt = len(infer.prompt_ids(vlm, infer._as_messages(second), 8))
    assert ran[0] < prompt - vlm.num_image_tokens          # the image was not run again
    vlm._prompt_cache = None
    ran.clear()
    assert infer.generate(vlm, image, second, max_new_tokens=8) == warm
    assert ran[0] == prompt
    ran.clear()
    infer.generate(vlm, Image.new("RGB", (40, 40)), second, max_new_tokens=2)
    assert ran[0] == prompt                                 # another image: a cold start
