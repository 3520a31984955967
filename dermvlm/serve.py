"""What the chat front end calls: an `Assistant` that holds one zero-shot model and one VLM
(the embedded default unless told otherwise) and answers chat, classify and report requests.
Uploads are opened by `dermvlm.imaging.open_image`. No Gradio here: app.py is the UI.
"""
import threading
import time
from pathlib import Path

from PIL import Image

from dermvlm import embedded
from dermvlm.case import Case
from dermvlm.chat import REDIRECTS, analysis_line
from dermvlm.clip.classify import scoped
from dermvlm.replies import composed, stream_vetted, turn_kind
from dermvlm.clip.model import load_model
from dermvlm.imaging import eval_transform
from dermvlm.trust import TrustModel, abstain_message, assess, concept_scaling
from dermvlm.vlm.drafts import store_for
from dermvlm.vlm.fastlm import for_vlm
from dermvlm.vlm.infer import describe, generate
from dermvlm.vlm.model import DermVLM, vision_weights_file
from dermvlm.zeroshot import ZeroShot, zeroshot_findings


class Assistant:
    """Zero-shot classification, concept scores, chat and reports for one image at a time.
    Thread-safe for Gradio's worker threads (one lock around each model)."""

    def __init__(self, vlm_folder=None, clip_spec=None, quantize=None):
        if vlm_folder is None or clip_spec is None:
            embedded.check_default()
        self.vlm_folder = str(vlm_folder or embedded.vlm_folder())
        self.clip_spec = str(clip_spec or embedded.clip_spec())
        started = time.perf_counter()
        model, model_cfg, tokenizer = load_model(self.clip_spec)
        self.zeroshot = ZeroShot(model, tokenizer)
        self.transform = eval_transform(model_cfg["vision_cfg"]["image_size"])
        self.trust = TrustModel.load(self.clip_spec)        # None: no OOD check, raw softmax
        self.vlm = DermVLM.from_pretrained(self.vlm_folder, vision=self._shared_tower(model))
        # None/"none" (fp32), "int8", "dynamic" or "auto" weights (dermvlm.vlm.fastlm)
        self.vlm.decode_quantize = quantize
        # the decode weights are made at load, not on the first request (and a quantize
        # this CPU cannot run fails here)
        for_vlm(self.vlm)
        store_for(self.vlm)                 # the draft store too (dermvlm.vlm.drafts)
        self._clip_lock, self._vlm_lock = threading.Lock(), threading.Lock()
        self.warm_up()
        self.load_seconds = time.perf_counter() - started

    def _shared_tower(self, clip_model):
        """The zero-shot model's image tower when the VLM reads its tower from the same
        folder (the embedded default stores it once), else None (the VLM loads its own)."""
        clip_dir = Path(self.clip_spec.removeprefix("local-dir:")).resolve()
        return clip_model.visual if vision_weights_file(self.vlm_folder).parent == clip_dir \
            else None

    def warm_up(self):
        """Encode the label and concept prompts once, so the first request is fast."""
        from dermvlm.ontology import CONDITIONS
        from dermvlm.vocab import SKINCON_CONCEPTS
        self.labels = [c.name for c in CONDITIONS]
        self.concepts = list(SKINCON_CONCEPTS)
        self.classify(Image.new("RGB", (64, 64), (200, 160, 140)))

    def inspect(self, image):
        """(CLIP features (1, D), OOD verdict or None when the model has no reference,
        (modality judged, its confidence)): dermoscopic, clinical or not skin (an abstained
        verdict), and the verdict is against that modality's reference (dermvlm.trust.assess)."""
        with self._clip_lock:
            features = self.zeroshot.encode_images(self.transform(image)[None])
            modalities, verdicts = assess(self.zeroshot, self.trust, features, [image])
        return features, verdicts[0], modalities[0]

    def _scores(self, image):
        """(calibrated diagnosis probabilities over self.labels, concept scores, verdict,
        CLIP features (1, D), (modality, its probability)). A clinical photograph whose top
        diagnosis the model has not earned on real clinical photographs, or whose top
        probability is below the trust file's clinical minimum, gets an abstained verdict
        (dermvlm.trust)."""
        features, verdict, modality = self.inspect(image)
        with self._clip_lock:
            logits = self.zeroshot.logits(features, self.labels)
            probs = (self.trust.calibrated(logits, [modality[0]]) if self.trust
                     else logits.softmax(1))[0]
            concepts = self.zeroshot.concept_scores(features, self.concepts,
                                                    **concept_scaling(self.trust))[0]
            if verdict is not None:      # the clinical rules, as `dermvlm classify` has them
                verdict = scoped(self.trust, self.zeroshot, features, [modality], [verdict],
                                 probs[None])[0]
        return probs, concepts, verdict, features, modality

    def classify(self, image, top_k=5, top_concepts=8):
        """({diagnosis: calibrated probability} top-k, {concept: MONET score} top concepts,
        OOD verdict or None, (modality judged, its probability)). An abstained image gets no
        diagnoses."""
        probs, concepts, verdict, _, modality = self._scores(image)
        best = probs.argsort(descending=True)[:top_k].tolist()
        strong = concepts.argsort(descending=True)[:top_concepts].tolist()
        diagnoses = {} if verdict and verdict["abstained"] else {
            self.labels[i]: float(probs[i]) for i in best}
        return (diagnoses, {self.concepts[i]: float(concepts[i]) for i in strong}, verdict,
                modality)

    def case(self, image, top_k=3):
        """The image's one source of truth for chat and report: dermvlm.case.Case (ranked
        differential, P(malignant or premalignant), the concern they imply, the findings
        seen, OOD verdict)."""
        probs, _, verdict, features, _ = self._scores(image)
        with self._clip_lock:
            seen = zeroshot_findings(self.zeroshot, features)[0]      # lesion type, colours
        threshold = self.trust.settings.malignancy_threshold if self.trust else None
        return Case.from_probabilities(probs.tolist(), self.labels, verdict, threshold, top_k,
                                       findings=seen)

    def chat(self, image, history, message, max_new_tokens=160):
        """Stream the reply to `message` given earlier [{"role", "content"}] turns: yields the
        growing reply text, every yield extending the last. Questions outside the image get
        a redirect; claim questions (diagnosis, benign or malignant, differential, urgency,
        comparisons) are answered from the image's case (dermvlm.replies.composed); the
        model words the rest, streamed a sentence at a time once each sentence is checked
        against the case (dermvlm.replies.stream_vetted)."""
        kind, case, messages = self.prepare_turn(image, history, message)
        if isinstance(messages, str):
            yield messages
            return
        with self._vlm_lock:
            pieces = generate(self.vlm, image, messages, stream=True,
                              max_new_tokens=max_new_tokens)
            yield from stream_vetted(pieces, case, kind)

    def prepare_turn(self, image, history, message, case=None):
        """(question kind, case, the messages for the model), or with a ready answer (a
        redirect, the abstention, or a reply composed from the case) in place of the
        messages. eval.chat runs the same steps, batched."""
        kind = turn_kind(message)
        if kind in REDIRECTS:
            return kind, None, REDIRECTS[kind]
        case = case or self.case(image)
        if case.abstained:
            return kind, case, abstain_message(case.verdict)
        ready = composed(kind, case, message)
        if ready is not None:
            return kind, case, ready
        messages = [{"role": "system", "content": analysis_line(case.differential)}]
        messages += [{"role": m["role"], "content": str(m["content"])} for m in history
                     if m.get("role") in ("user", "assistant")]
        messages.append({"role": "user", "content": message})
        return kind, case, messages

    def report(self, image):
        """(LesionReport, readable text): the VLM's findings, with the case's differential
        and concern."""
        from dermvlm.report import render_report_text
        case = self.case(image, top_k=5)
        with self._vlm_lock:
            report = describe(self.vlm, image, ood=case.verdict, case=case)[0]
        return report, render_report_text(report)
