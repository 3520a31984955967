"""The Gradio front end, on tiny random models: the app builds, a launched
server answers classify / chat / report through gradio_client (ten sessions at once), and a
real headless Chromium drives it with Playwright."""
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import app

from dermvlm.config import get_config
from dermvlm.vlm.build import build_vlm
from tiny_parts import tiny_lm, tiny_tokenizer, tiny_vision, vanilla_open_clip_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ---- a launched app on tiny models --------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    tok = tiny_tokenizer()
    lm = tiny_lm(tok)
    config = get_config("tiny", [f"vlm.lm={root / 'lm'}", "vlm.max_length=512"]).vlm
    vlm = build_vlm(config, lm=lm, tokenizer=tok, vision=tiny_vision())
    # a random LM may "say" only special or blank tokens; the browser test needs visible
    # text, so the base LM is saved with those suppressed in generation
    lm.generation_config.suppress_tokens = sorted(set(tok.all_special_ids) | {
        i for i in range(len(tok)) if not tok.decode([i]).strip()})
    lm.generation_config.max_new_tokens = 24
    lm.save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    vlm.save_pretrained(root / "vlm")
    clip = vanilla_open_clip_folder(root / "clip")
    return str(root / "vlm"), str(clip)


def _free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_models):
    demo = app.build_app(tiny_models)
    demo.launch(server_name="127.0.0.1", server_port=_free_port(),
                prevent_thread_lock=True, quiet=True)
    yield demo, demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def example_image():
    return str(next((Path(__file__).parent.parent / "docs" / "examples").glob("*.jpg")))


def test_client_calls_classify_chat_and_report(server, example_image, tmp_path):
    from gradio_client import Client, handle_file
    client = Client(server[1], verbose=False)
    _, diagnoses, concepts, status = client.predict(handle_file(example_image), "embedded default",
                                                 api_name="/classify")
    assert len(diagnoses["confidences"]) == 5 and "Image loaded" in status
    assert len(concepts["data"]) == 8 and concepts["columns"] == ["concept", "score"]
    history, cleared = client.predict(handle_file(example_image), "What colour is it?", [],
                                      "embedded default", api_name="/chat")
    assert app.message_text(history[0]["content"]) == "What colour is it?"
    assert history[1]["role"] == "assistant"
    history, _ = client.predict(handle_file(example_image), "And the border?", history,
                                "embedded default", api_name="/chat")   # a second turn
    assert [app.message_text(m["content"]) for m in history[::2]] == ["What colour is it?",
                                                                      "And the border?"]
    text, data, download, = client.predict(handle_file(example_image), "embedded default",
                                           api_name="/report")
    assert "Lesions:" in text and data["disclaimer"] and Path(download).is_file()
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image at all")
    _, _, _, status = client.predict(handle_file(str(bad)), "embedded default",
                                  api_name="/classify")
    assert "not an image" in status                    # a message, and the app keeps serving
    again = client.predict(handle_file(example_image), "embedded default",
                           api_name="/classify")
    assert "Image loaded" in again[3]


@pytest.mark.parametrize("value", ["/etc", "runs/vlm2/model|/etc/passwd", "../../secret"])
def test_a_model_value_that_is_not_configured_loads_nothing(server, example_image, value):
    """The selector is the operator's fixed list: a request naming anything else gets one
    neutral line (or Gradio's own refusal) that names no server path, and no model loads."""
    from gradio_client import Client, handle_file
    client = Client(server[1], verbose=False)
    loaded = dict(app._assistants)
    try:
        reply = str(client.predict(handle_file(example_image), value, api_name="/classify"))
    except Exception as exc:                            # Gradio refused the value itself
        reply = str(exc)
    assert app._assistants == loaded
    assert "/etc" not in reply and "secret" not in reply and "tmp" not in reply
    with pytest.raises(app.NotOffered, match="not available"):
        app.get_assistant(value, app.model_table())


def test_ten_concurrent_chat_sessions_complete(server, example_image):
    from gradio_client import Client, handle_file

    def session(i):
        client = Client(server[1], verbose=False)
        history, _ = client.predict(handle_file(example_image), f"Question {i}?", [],
                                    "embedded default", api_name="/chat")
        return history
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(session, range(10)))
    asked = [app.message_text(r[0]["content"]) for r in results]
    assert asked == [f"Question {i}?" for i in range(10)]
    assert all(r[1]["role"] == "assistant" for r in results)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_browser_uploads_asks_and_sees_a_streamed_answer(server, example_image, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    shots = Path(os.environ.get("DERMVLM_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(server[1])
        page.locator("#upload input[type=file]").set_input_files(example_image)
        expect(page.locator("#status")).to_contain_text("Image loaded", timeout=30_000)
        page.locator("#question textarea").fill("What colour is the lesion?")
        page.locator("#send").click()
        bot = page.locator("#chatbot .message-row").last
        expect(page.locator("#chatbot")).to_contain_text("What colour is the lesion?")
        expect(bot).not_to_be_empty(timeout=30_000)
        page.screenshot(path=str(shots / "chat.png"))
        page.get_by_role("tab", name="Concepts & diagnoses").click()
        expect(page.locator("#concepts")).to_be_visible()
        expect(page.locator("#concepts canvas, #concepts svg").first).to_be_visible(
            timeout=30_000)
        page.screenshot(path=str(shots / "concepts.png"))
        browser.close()
    assert (shots / "chat.png").stat().st_size > 10_000
