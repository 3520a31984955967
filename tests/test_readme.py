"""Every command the README shows parses as written: each `dermvlm ...`, `python -m ...` and
`python app.py ...` line is handed to its entry point's main(), which stops right after its
argument parser accepted the line (nothing runs). A renamed flag or verb fails here."""
import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


class Parsed(Exception):
    """Raised by the patched parser once the arguments were accepted."""


def readme_commands():
    """Command lines from the README's bash blocks (continuations joined, comments cut)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    lines = [shlex.split(line, comments=True) for line in text.splitlines()]
    return [words for words in lines if words and words[0] not in ("make",)]


def entry_point(words):
    """(main function, its argv) for a README command line; `torchrun ... -m M` and
    `accelerate launch ... -m M` are M's command line."""
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):                 # environment prefixes
        words = words[1:]
    if words[0] == "torchrun" or words[:2] == ["accelerate", "launch"]:
        words = ["python"] + words[words.index("-m"):]
    if words[0] == "dermvlm":
        return importlib.import_module("dermvlm.cli").main, words[1:]
    if words[:2] == ["python", "-m"]:
        return importlib.import_module(words[2]).main, words[3:]
    if words[:2] == ["python", "app.py"]:
        return importlib.import_module("app").main, words[2:]
    raise AssertionError(f"README command of an unknown kind: {' '.join(words)}")


def test_the_readme_shows_the_daily_commands():
    commands = {" ".join(w[:2]) for w in readme_commands()}
    for expected in ("dermvlm classify", "dermvlm describe", "dermvlm chat", "python app.py",
                     "dermvlm synth", "dermvlm build-default", "dermvlm eval"):
        assert expected in commands
    assert len(README.read_text().splitlines()) < 200


@pytest.mark.parametrize("words", readme_commands(), ids=lambda w: " ".join(w)[:60])
def test_readme_command_parses(words, monkeypatch):
    def accept(parser, args=None, namespace=None):
        original(parser, args, namespace)            # a bad line exits 2 here
        raise Parsed
    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", accept)
    main, argv = entry_point(words)
    with pytest.raises(Parsed):
        main(argv)


def test_a_wrong_flag_fails_the_check(monkeypatch):
    def accept(parser, args=None, namespace=None):
        original(parser, args, namespace)
        raise Parsed
    original = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", accept)
    main, argv = entry_point(["dermvlm", "classify", "photo.jpg", "--label", "x,y"])
    with pytest.raises(SystemExit):
        main(argv)
