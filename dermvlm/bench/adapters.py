"""Model adapters for the benchmark, behind one small interface:

    adapter.answer(image_path, question) -> Prediction(text, confidence or None)

`reference` (the ground truth: must score 100 %), `random` (chance), `clip` (scores the
options of closed questions with a zero-shot model), `vlm` (a dermvlm VLM folder) and `openai`
(any OpenAI-compatible chat endpoint: vLLM, TGI, ollama).
"""
import base64
import json
import mimetypes
import sys
import urllib.error
import urllib.request
import zlib
import numpy as np

from dermvlm.bench.parse import lettered_prompt
from dermvlm.bench.prediction import Prediction
from dermvlm.errors import DermvlmError


class ReferenceAdapter:
    """Answers from the answers file itself: a check of the pipeline (must score 100 %)."""
    name = "reference"

    def __init__(self, answers):
        self.answers = answers          # {(image_id, question_id): answer}

    def answer(self, item, question):
        value = self.answers[(item["image_id"], question.id)]
        return Prediction(json.dumps(value) if isinstance(value, list) else str(value), 1.0)


class RandomAdapter:
    """Uniform random options (multi: each option with probability 1/2): chance level."""
    name = "random"

    def __init__(self, seed=0):
        self.seed = seed

    def answer(self, item, question):
        rng = np.random.default_rng(zlib.crc32(f"{self.seed}|{item['image_id']}|"
                                               f"{question.id}".encode()))
        if question.type == "single":
            return Prediction(str(rng.choice(question.options)), 1 / len(question.options))
        if question.type == "multi":
            picked = [o for o in question.options if rng.random() < 0.5] or [question.options[0]]
            return Prediction(json.dumps(picked))
        return Prediction("a skin lesion")


class ClipAdapter:
    """Closed questions by zero-shot scoring of the options (prompt: 'question: option');
    multi-choice keeps options above the uniform probability. Open questions get no text."""
    name = "clip"

    def __init__(self, spec):
        from dermvlm.imaging import eval_transform
        from dermvlm.clip.model import load_model
        from dermvlm.zeroshot import ZeroShot
        model, model_cfg, tokenizer = load_model(spec)
        self.zs = ZeroShot(model, tokenizer)
        self.transform = eval_transform(model_cfg["vision_cfg"]["image_size"])
        self._features = {}

    def _image(self, path):
        from dermvlm.imaging import open_image
        if path not in self._features:
            image = open_image(path)
            self._features = {path: self.zs.encode_images(self.transform(image)[None])}
        return self._features[path]

    def answer(self, item, question):
        if question.type == "open":
            return Prediction("")
        templates = (question.prompt + " {c}", "A skin image of {c}.")
        probs = self.zs.logits(self._image(item["image"]), list(question.options),
                               templates).softmax(1)[0]
        if question.type == "single":
            best = int(probs.argmax())
            return Prediction(question.options[best], float(probs[best]))
        picked = [o for o, p in zip(question.options, probs) if p > 1 / len(question.options)]
        return Prediction(json.dumps(picked))


class VLMAdapter:
    """A dermvlm VLM folder, asked the lettered question (greedy; closed questions get a short
    answer budget, open ones max_new_tokens)."""
    name = "vlm"

    def __init__(self, folder=None, max_new_tokens=96, vlm=None):
        if vlm is None:
            from dermvlm.vlm.model import DermVLM
            vlm = DermVLM.from_pretrained(folder)
        self.vlm, self.max_new_tokens = vlm, max_new_tokens

    def answer(self, item, question):
        from dermvlm.vlm.infer import generate
        try:
            reply = generate(self.vlm, item["image"],
                             [{"role": "user", "content": lettered_prompt(question)}],
                             max_new_tokens=self.max_new_tokens
                             if question.type == "open" else 24)
        except DermvlmError as exc:     # e.g. a prompt longer than vlm.max_length
            print(f"warning: {item['image_id']} {question.id}: {exc}; scored wrong",
                  file=sys.stderr)
            reply = ""
        return Prediction(reply)


class OpenAIAdapter:
    """An OpenAI-compatible /v1/chat/completions endpoint; the image goes as a data URL."""
    name = "openai"

    def __init__(self, base_url, model, api_key="EMPTY", timeout=60.0, max_tokens=256):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.timeout, self.max_tokens = model, api_key, timeout, \
            max_tokens

    def answer(self, item, question):
        mime = mimetypes.guess_type(item["image"])[0] or "image/jpeg"
        with open(item["image"], "rb") as f:
            data_url = f"data:{mime};base64,{base64.b64encode(f.read()).decode()}"
        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": lettered_prompt(question)}]}]}
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read().decode())
            return Prediction(payload["choices"][0]["message"]["content"] or "")
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise EndpointError(f"{self.url}: {getattr(exc, 'reason', exc)}") from None
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise EndpointError(f"{self.url}: reply is not an OpenAI chat completion "
                                f"({type(exc).__name__}: {exc})") from None


class EndpointError(DermvlmError):
    """The endpoint timed out, refused, or answered something that is not a completion."""


def make_adapter(spec, answers=None):
    """'reference', 'random[:SEED]', 'clip:SPEC', 'vlm:FOLDER', 'openai:URL#MODEL', or
    'default' / 'default:clip' (the embedded default VLM / zero-shot model)."""
    adapter = _adapter(spec, answers)
    adapter.spec = spec
    return adapter


def _adapter(spec, answers):
    kind, _, rest = spec.partition(":")
    if kind == "reference":
        return ReferenceAdapter(answers)
    if kind == "random":
        return RandomAdapter(int(rest or 0))
    if kind == "clip":
        from dermvlm.hub import check_model_spec
        check_model_spec(rest)
        return ClipAdapter(rest)
    if kind == "vlm":
        return VLMAdapter(rest)
    if kind == "hf":
        from dermvlm.bench.hf_adapter import HFAdapter
        return HFAdapter(rest)
    if kind == "untuned":
        from dermvlm.vlm.build import untuned_baseline
        return VLMAdapter(vlm=untuned_baseline(rest))
    if kind == "openai":
        url, _, model = rest.partition("#")
        if not url.startswith(("http://", "https://")):
            raise DermvlmError(f"openai:URL#MODEL needs an http(s) URL, got {url!r}")
        return OpenAIAdapter(url, model or "default")
    if kind == "default":
        from dermvlm.embedded import checked_part
        return ClipAdapter(checked_part("clip")) if rest == "clip" else \
            VLMAdapter(checked_part("vlm"))
    raise DermvlmError(f"unknown model spec {spec!r}: use reference, random, clip:MODEL, "
                       "vlm:FOLDER, untuned:FOLDER, hf:FOLDER_OR_NAME, openai:URL#MODEL, "
                       "default or default:clip")
