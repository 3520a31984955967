import json

import pytest

from dermvlm.config import Config, get_config
from dermvlm.errors import ConfigError


def test_presets_differ_and_tiny_is_small():
    tiny, default = get_config("tiny"), get_config("default")
    assert tiny.synth.size < default.synth.size and tiny.synth.n < default.synth.n


def test_dotted_overrides_are_typed():
    cfg = get_config("tiny", ["synth.n=5", "synth.skin_types=[5,6]", "synth.split=test",
                              "synth.artefact_prob=0"])
    assert cfg.synth.n == 5 and cfg.synth.skin_types == (5, 6)
    assert cfg.synth.split == "test" and cfg.synth.artefact_prob == 0.0
    assert isinstance(cfg.synth.artefact_prob, float)


def test_json_round_trip_is_exact():
    cfg = get_config("base", ["synth.conditions=melanoma,psoriasis"])
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.synth.conditions == ("melanoma", "psoriasis")


@pytest.mark.parametrize("override, fragment", [
    ("synth.sise=3", "unknown config key 'synth.sise'"),
    ("nope.n=3", "no section 'nope'"),
    ("synth.n=many", "expected an integer"),
    ("synth.n", "expected KEY=VALUE"),
    ("clip.loss=sigmoid", "clip.loss must be one of clip, siglip, got 'sigmoid'"),
    ("vlm.projector=mlp", "vlm.projector must be one of mlp2x_gelu, linear"),
    ("clip.eval_every=0", "clip.eval_every must be a positive integer, got 0"),
    ("vlm.batch_size=-2", "vlm.batch_size must be a positive integer, got -2"),
])
def test_bad_overrides_say_what_is_wrong(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        get_config("tiny", [override])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_config("huge")


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="synth.colour"):
        Config.from_dict({"synth": {"colour": 1}})


def test_every_preset_uses_allowed_choices_and_saved_configs_are_checked():
    from dermvlm.config import CHOICES, PRESETS
    for preset in PRESETS:
        data = get_config(preset).to_dict()
        for key, allowed in CHOICES.items():
            section, name = key.split(".")
            assert data[section][name] in allowed, (preset, key)
    with pytest.raises(ConfigError, match="clip.text_mode must be one of locked, lora, full"):
        Config.from_dict({"clip": {"text_mode": "frozen"}})


BAD_SET_VALUES = [
    ("synth.conditions=[melanoma]", "is not a JSON list"),         # unquoted items
    ('synth.conditions=["melanomaX"]', "'melanomaX' is not one of the allowed values"),
    ("synth.skin_types=[7]", "7 is not one of the allowed values"),
    ("clip.steps=many", "expected an integer"),                      # wrong type
]


@pytest.mark.parametrize("value, fragment", BAD_SET_VALUES)
@pytest.mark.parametrize("command", ["synth", "train.clip", "train.vlm", "build-default"])
def test_bad_set_values_are_one_line_for_every_command(command, value, fragment, tmp_path,
                                                       capsys):
    """Every command that takes --set names the key, the value and what is allowed in one
    line and exits 2, before any work (no traceback)."""
    import importlib

    from dermvlm.cli import main as dermvlm_main
    out = str(tmp_path / "out")
    if command == "synth":
        code = dermvlm_main(["synth", "--out", out, "--n", "2", "--set", value])
    elif command == "build-default":
        code = dermvlm_main(["build-default", "--work", out, "--set", value])
    else:
        argv = ["--data", str(tmp_path), "--out", out, "--set", value]
        argv += ["--stage", "1"] if command == "train.vlm" else []
        code = importlib.import_module(command).main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err
    assert value.split("=")[0] in err
    assert not (tmp_path / "out").exists()
