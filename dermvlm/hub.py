"""The Hugging Face Hub is off unless the user opts in; refusals come before heavy imports.

Offline (no network here or in CI), `hf-hub:` names and open_clip pretrained tags fail at once
with one clear line instead of retrying for ~20 s.
"""
import os

from dermvlm.errors import DermvlmError


def hub_allowed():
    """True only with DERMVLM_ALLOW_HUB=1 and HF_HUB_OFFLINE unset or 0."""
    return os.environ.get("DERMVLM_ALLOW_HUB") == "1" and os.environ.get(
        "HF_HUB_OFFLINE", "0") in ("0", "")


def check_hub(spec):
    if not hub_allowed():
        raise DermvlmError(f"{spec} needs the Hugging Face Hub, which is off (no network here, "
                           "or HF_HUB_OFFLINE=1). Set DERMVLM_ALLOW_HUB=1 on a machine with "
                           "network access, or download it and pass local-dir:PATH")


def check_model_spec(spec):
    """Fail fast on specs that would reach the hub; cheap (no torch/open_clip import)."""
    if spec.startswith("hf-hub:"):
        check_hub(spec)
    elif not spec.startswith("local-dir:") and not os.path.exists(spec) and ":" in spec:
        check_hub(spec)   # an open_clip name with a pretrained tag downloads weights


if not hub_allowed():   # libraries that honour it then skip their own network retries
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
