"""`hf:SOURCE`: any transformers image-text-to-text model (AutoModelForImageTextToText with
its AutoProcessor: LLaVA, Qwen2-VL, Gemma 3 / MedGemma, Idefics3 / SmolVLM, ...) run locally,
greedy, several questions per batch. SOURCE is a local folder (dermvlm merge-export writes one),
or a hub name when the hub is allowed (DERMVLM_ALLOW_HUB=1).

The prompt is the processor's chat template with one image part and the lettered question
(as every adapter asks it); when that template places no image (a plain LLaVA export whose
template is its LM's), the tokenizer's template gets the processor's image token before the
question, as dermvlm's own VLM is prompted.
"""
from pathlib import Path

import torch

from dermvlm.bench.parse import lettered_prompt
from dermvlm.bench.prediction import Prediction
from dermvlm.errors import DermvlmError


class HFAdapter:
    name = "hf"

    def __init__(self, source, max_new_tokens=96, batch_size=4, device="cpu"):
        from transformers import AutoModelForImageTextToText, AutoProcessor
        if not Path(source).is_dir():
            from dermvlm.hub import check_hub
            check_hub(f"hf:{source}")
        try:
            self.processor = AutoProcessor.from_pretrained(source)
            self.model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=torch.float32).to(device).eval()
        except (OSError, ValueError) as exc:
            raise DermvlmError(f"hf:{source}: not a transformers image-text-to-text model "
                               f"with a processor ({exc})") from None
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"                  # batched generation
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens, self.batch_size, self.device = max_new_tokens, batch_size, device
        self.spec = f"hf:{source}"

    def prompt(self, question):
        text = lettered_prompt(question)
        image_token = getattr(self.processor, "image_token", "<image>")
        if getattr(self.processor, "chat_template", None):
            rendered = self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"},
                                              {"type": "text", "text": text}]}],
                add_generation_prompt=True, tokenize=False)
            if image_token in rendered:
                return rendered            # a multimodal template placed the image itself
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{image_token}\n{text}"}],
            add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def answer_batch(self, items, questions):
        """Predictions for (item, question) pairs, in one left-padded greedy batch."""
        from dermvlm.imaging import open_image
        images = [open_image(item["image"]) for item in items]
        inputs = self.processor(images=images, text=[self.prompt(q) for q in questions],
                                padding=True, return_tensors="pt").to(self.device)
        budget = max(self.max_new_tokens if q.type == "open" else 24 for q in questions)
        out = self.model.generate(**inputs, max_new_tokens=budget, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                            skip_special_tokens=True)
        return [Prediction(t.strip()) for t in texts]

    def answer(self, item, question):
        return self.answer_batch([item], [question])[0]
