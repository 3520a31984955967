"""What the chat front end calls: a safe image opener for untrusted uploads and an
`Assistant` that holds one zero-shot model and one VLM (the embedded default unless told
otherwise) and answers chat, classify and report requests. No Gradio here: app.py is the UI.
"""
import threading
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dermvlm.errors import DermvlmError

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000        # ~6300 x 6300; PIL's bomb check fires above this
DISCLAIMER = ("Research tool, not a medical device: dermvlm's answers are not a diagnosis. "
              "See a clinician about any skin concern.")


class UploadError(DermvlmError):
    """An upload that is not a usable image; the message is meant for the user."""


def open_upload(path, max_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_UPLOAD_PIXELS):
    """An upright 8-bit RGB PIL image from an untrusted file, or UploadError saying why not.
    Handles EXIF rotation, RGBA/LA (flattened on white), greyscale, palette and 16-bit
    images; refuses oversized files and decompression bombs before decoding pixels."""
    if path is None:
        raise UploadError("Please upload an image first.")
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise UploadError("The upload could not be read; please try again.") from None
    if size > max_bytes:
        raise UploadError(f"The file is {size / 2**20:.0f} MB; the limit is "
                          f"{max_bytes / 2**20:.0f} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as probe:
                width, height = probe.size
                if width * height > max_pixels:
                    raise UploadError(f"The image is {width} x {height} pixels; the limit is "
                                      f"{max_pixels / 1e6:.0f} megapixels.")
                probe.verify()                       # truncated or corrupt data
            with Image.open(path) as image:
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb8(image)
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(f"The image is too large to open safely (limit "
                          f"{max_pixels / 1e6:.0f} megapixels).") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise UploadError("This file is not an image dermvlm can read (or it is corrupt). "
                          "Please upload a JPEG or PNG photograph.") from None


def _to_rgb8(image):
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):      # 16-bit / float greyscale
        values = np.asarray(image, dtype=np.float64)
        low, high = np.percentile(values, (0.5, 99.5))
        scaled = np.clip((values - low) / max(high - low, 1e-9) * 255, 0, 255)
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and
                                               "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


class Assistant:
    """Zero-shot classification, concept scores, chat and reports for one image at a time.
    Thread-safe for Gradio's worker threads (one lock around each model)."""

    def __init__(self, vlm_folder=None, clip_spec=None):
        from dermvlm import embedded
        from dermvlm.clip.data import eval_transform
        from dermvlm.clip.model import load_model
        from dermvlm.vlm.model import DermVLM
        from dermvlm.zeroshot import ZeroShot
        if vlm_folder is None or clip_spec is None:
            embedded.check_default()
        self.vlm_folder = str(vlm_folder or embedded.vlm_folder())
        self.clip_spec = str(clip_spec or embedded.clip_spec())
        started = time.perf_counter()
        model, model_cfg, tokenizer = load_model(self.clip_spec)
        self.zeroshot = ZeroShot(model, tokenizer)
        self.transform = eval_transform(model_cfg["vision_cfg"]["image_size"])
        self.vlm = DermVLM.from_pretrained(self.vlm_folder)
        self._clip_lock, self._vlm_lock = threading.Lock(), threading.Lock()
        self.warm_up()
        self.load_seconds = time.perf_counter() - started

    def warm_up(self):
        """Encode the label and concept prompts once, so the first request is fast."""
        from dermvlm.synth.ontology import CONDITIONS
        from dermvlm.vocab import SKINCON_CONCEPTS
        self.labels = [c.name for c in CONDITIONS]
        self.concepts = list(SKINCON_CONCEPTS)
        self.classify(Image.new("RGB", (64, 64), (200, 160, 140)))

    def classify(self, image, top_k=5, top_concepts=8):
        """({diagnosis: probability} top-k, {concept: MONET score} top concepts)."""
        with self._clip_lock:
            features = self.zeroshot.encode_images(self.transform(image)[None])
            probs = self.zeroshot.logits(features, self.labels).softmax(1)[0]
            concepts = self.zeroshot.concept_scores(features, self.concepts)[0]
        best = probs.argsort(descending=True)[:top_k].tolist()
        strong = concepts.argsort(descending=True)[:top_concepts].tolist()
        return ({self.labels[i]: float(probs[i]) for i in best},
                {self.concepts[i]: float(concepts[i]) for i in strong})

    def chat(self, image, history, message, max_new_tokens=160):
        """Stream the reply to `message` given earlier [{"role", "content"}] turns: yields the
        growing reply text."""
        messages = [{"role": m["role"], "content": str(m["content"])} for m in history
                    if m.get("role") in ("user", "assistant")]
        messages.append({"role": "user", "content": message})
        with self._vlm_lock:
            reply = ""
            for piece in self.vlm.chat(image, messages, stream=True,
                                       max_new_tokens=max_new_tokens):
                reply += piece
                yield reply

    def report(self, image):
        """(LesionReport, readable text)."""
        from dermvlm.report import render_report_text
        with self._vlm_lock:
            report = self.vlm.describe(image)
        return report, render_report_text(report)
