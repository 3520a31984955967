"""dermvlm chat front end (Gradio Blocks): upload a skin image, chat about it, see concept
scores and zero-shot diagnoses, and get a structured lesion report.

    python app.py                       # embedded default model, http://127.0.0.1:7860
    GRADIO_SERVER_PORT=8080 python app.py
    python app.py --vlm runs/vlm2/model --clip runs/clip/model
    python app.py --model mine=runs/vlm2/model --model other=runs/b/vlm|runs/b/clip

The model selector lists only what the operator configured here: the default (the embedded
model, or --vlm/--clip) and each --model NAME=VLM_FOLDER[|CLIP_SPEC]. A value a request sends
that is not on the list is refused with one neutral line, and nothing is loaded.

Research tool, not a diagnosis. Uploads live in a per-session temporary folder that is
deleted when the session ends.
"""
import argparse
import json
import shutil
import tempfile
import threading
from pathlib import Path

import gradio as gr
import pandas as pd

from dermvlm.cliargs import add_quantize_option
from dermvlm.embedded import trained_on
from dermvlm.errors import DermvlmError
from dermvlm.imaging import ImageError, open_image
from dermvlm.report import DISCLAIMER
from dermvlm.serve import Assistant
from dermvlm.trust import abstain_message, ood_note

EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "docs" / "examples").glob("*.jpg"))
DEFAULT_MODEL = "embedded default"
NOT_OFFERED = "This model is not available on this server."
_assistants, _assistants_lock = {}, threading.Lock()
DECODE = {"quantize": None}       # --quantize: every Assistant decodes with these weights


class NotOffered(DermvlmError):
    """A model value from a request that the operator did not configure."""


def model_table(default_pair=(None, None), named=()):
    """{selector name: (VLM folder, CLIP spec)}: the default and each 'NAME=VLM[|CLIP]'
    (the CLIP spec defaults to the default's)."""
    table = {DEFAULT_MODEL: tuple(default_pair)}
    for entry in named:
        name, sep, spec = entry.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise DermvlmError(f"--model {entry!r}: expected NAME=VLM_FOLDER[|CLIP_SPEC]")
        vlm, _, clip = spec.partition("|")
        table[name.strip()] = (vlm.strip(), clip.strip() or default_pair[1])
    return table


def get_assistant(choice, models):
    """The Assistant for a selector value, loaded once and shared; a value that is not in
    `models` (the operator's table) raises NotOffered before anything is loaded."""
    if choice in (None, ""):
        choice = DEFAULT_MODEL
    if not isinstance(choice, str) or choice not in models:
        raise NotOffered(NOT_OFFERED)
    key = models[choice]
    with _assistants_lock:
        if key not in _assistants:
            _assistants[key] = Assistant(*key, quantize=DECODE["quantize"])
        return _assistants[key]


def status_line(verdict, modality=None):
    """The line under the image: why nothing is answered, or which kind of image the model
    judged it (`modality`: (dermoscopic | clinical, probability))."""
    if verdict and verdict["abstained"]:
        return f"⚠️ {abstain_message(verdict)}{ood_note(verdict)}"
    if modality:
        kind = "dermoscopic image" if modality[0] == "dermoscopic" else "clinical photograph"
        return (f"Image loaded: judged a {kind} ({modality[1]:.0%}). Ask a question in the "
                "chat.")
    return "Image loaded. Ask a question in the chat."


def message_text(content):
    """Chatbot message content as plain text (Gradio 6 sends a list of typed parts)."""
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content
                        if isinstance(part, dict) and part.get("type", "text") == "text")
    return "" if content is None else str(content)


def _session_dir(state):
    if not state.get("dir"):
        state["dir"] = tempfile.mkdtemp(prefix="dermvlm-session-")
    return state["dir"]


def _delete_session(state):
    if state and state.get("dir"):
        shutil.rmtree(state["dir"], ignore_errors=True)


def build_app(default_pair=(None, None), examples=EXAMPLES, models=None):
    models = models or model_table(default_pair)

    def classify(path, model_choice):
        """The upright image as the model sees it, top diagnoses, the concept chart and a
        status line (a friendly message for a bad upload)."""
        empty = pd.DataFrame({"concept": [], "score": []})
        if path is None:
            return None, {}, empty, "Upload an image to start."
        try:
            image = open_image(path)
            diagnoses, concepts, verdict, modality = get_assistant(
                model_choice, models).classify(image)
        except (ImageError, NotOffered) as exc:
            return None, {}, empty, f"⚠️ {exc}"
        except DermvlmError as exc:
            return None, {}, empty, f"⚠️ model error: {exc}"
        frame = pd.DataFrame({"concept": list(concepts), "score": list(concepts.values())})
        return image, diagnoses, frame, status_line(verdict, modality)

    def chat(path, message, history, model_choice):
        """Stream the assistant's reply into the chat history."""
        history = [{"role": m["role"], "content": message_text(m["content"])}
                   for m in history or [] if m.get("role") in ("user", "assistant")]
        message = (message or "").strip()
        if not message:
            yield history, ""
            return
        history.append({"role": "user", "content": message})
        try:
            image = open_image(path)
            assistant = get_assistant(model_choice, models)
            history.append({"role": "assistant", "content": ""})
            for text in assistant.chat(image, history[:-2], message):
                history[-1] = {"role": "assistant", "content": text}
                yield history, ""
        except DermvlmError as exc:
            history.append({"role": "assistant", "content": f"⚠️ {exc}"})
            yield history, ""

    def report(path, model_choice, state):
        try:
            image = open_image(path)
            lesion_report, text = get_assistant(model_choice, models).report(image)
        except DermvlmError as exc:
            return f"⚠️ {exc}", None, None, state
        data = lesion_report.model_dump(mode="json")
        out = Path(_session_dir(state)) / "lesion_report.json"
        out.write_text(json.dumps(data, indent=1))
        return "```\n" + text + "\n```", data, str(out), state

    with gr.Blocks(title="dermvlm", delete_cache=(1800, 3600)) as app:
        state = gr.State({}, delete_callback=_delete_session, time_to_live=3600)
        gr.Markdown("# dermvlm — skin image assistant\n**" + DISCLAIMER + "**\n\n"
                    + f"The embedded default: {trained_on()}")
        with gr.Row():
            with gr.Column(scale=2):
                # a File, not an Image: the upload reaches open_image() untouched, so a
                # corrupt or hostile file gets our message instead of a component error
                image = gr.File(label="Upload a skin image (JPEG, PNG, …)", type="filepath",
                                file_types=["image"], height=120, elem_id="upload")
                preview = gr.Image(label="As the model sees it (upright RGB)", height=260,
                                   interactive=False, elem_id="preview")
                if examples:
                    gr.Examples(examples, inputs=image, label="SynthDerm examples")
                # the choices are the operator's list; custom values pass Gradio's own check
                # only so that get_assistant refuses them with one neutral line (Gradio's
                # refusal would echo the value back)
                model = gr.Dropdown(list(models), value=DEFAULT_MODEL, allow_custom_value=True,
                                    label="Model")
                status = gr.Markdown("Upload an image to start.", elem_id="status")
            with gr.Column(scale=3):
                with gr.Tab("Chat"):
                    chatbot = gr.Chatbot(height=360, elem_id="chatbot", label="Chat")
                    with gr.Row():
                        question = gr.Textbox(placeholder="Ask about the lesion…",
                                              show_label=False, scale=5, elem_id="question")
                        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                with gr.Tab("Concepts & diagnoses"):
                    concepts = gr.BarPlot(x="concept", y="score", y_lim=[0, 1], sort="-y",
                                          x_label_angle=-35,
                                          label="SkinCon concepts (MONET-style scores)",
                                          elem_id="concepts")
                    diagnoses = gr.Label(num_top_classes=5, label="Zero-shot diagnoses")
                with gr.Tab("Structured report"):
                    make_report = gr.Button("Generate report", elem_id="report_button")
                    report_text = gr.Markdown()
                    report_json = gr.JSON(label="LesionReport JSON")
                    report_file = gr.File(label="Download JSON")

        image.change(classify, [image, model], [preview, diagnoses, concepts, status],
                     api_name="classify")
        chat_inputs, chat_outputs = [image, question, chatbot, model], [chatbot, question]
        send.click(chat, chat_inputs, chat_outputs, api_name="chat")
        question.submit(chat, chat_inputs, chat_outputs, api_name=False)
        make_report.click(report, [image, model, state],
                          [report_text, report_json, report_file, state], api_name="report")
    return app.queue(default_concurrency_limit=2, max_size=64)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vlm", help="VLM folder (default: the embedded default)")
    parser.add_argument("--clip", help="zero-shot CLIP spec (default: the embedded default)")
    parser.add_argument("--model", dest="models", action="append", default=[],
                        metavar="NAME=VLM_FOLDER[|CLIP_SPEC]",
                        help="another model the selector offers (repeatable)")
    add_quantize_option(parser, default="auto")
    args = parser.parse_args(argv)
    DECODE["quantize"] = args.quantize
    try:
        models = model_table((args.vlm, args.clip), args.models)
        assistant = get_assistant(DEFAULT_MODEL, models)
    except DermvlmError as exc:
        raise SystemExit(f"app.py: error: {exc}")
    print(f"models loaded in {assistant.load_seconds:.1f} s")
    # server name and port: Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT
    # (default 127.0.0.1:7860)
    build_app((args.vlm, args.clip), models=models).launch(show_error=True)


if __name__ == "__main__":
    main()
