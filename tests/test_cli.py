"""The console script: a real run, and bad arguments as one clear line."""
import json

import pytest

from dermvlm.cli import main


def test_synth_command_writes_everything_and_a_preview(tmp_path, capsys):
    out = tmp_path / "set"
    code = main(["synth", "--out", str(out), "--n", "10", "--seed", "1", "--size", "64",
                 "--preview", str(out / "grid.png"), "--quiet"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 10 and (out / "grid.png").stat().st_size > 1000
    assert len(list((out / "images").glob("*.jpg"))) == 10


@pytest.mark.parametrize("argv, fragment", [
    (["synth", "--out", "X", "--n", "-3"], "expected a positive integer, got -3"),
    (["synth", "--out", "X", "--preset", "huge"], "unknown preset 'huge'"),
    (["synth", "--out", "X", "--set", "synth.colour=red"], "unknown config key"),
    (["synth", "--out", "X", "--skin-types", "7"], "Fitzpatrick types are 1-6"),
])
def test_bad_arguments_give_one_line(tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["synth", "--out", str(blocker / "sub"), "--n", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot write to output folder" in err and len(err.splitlines()) == 1


def test_print_result_writes_json_or_one_error_line(tmp_path, capsys):
    import json

    from dermvlm.cliargs import print_result
    from dermvlm.errors import DataError
    out = tmp_path / "deep" / "r.json"
    assert print_result("x", lambda: {"a": 1}, out) == 0
    assert json.loads(out.read_text()) == {"a": 1} == json.loads(capsys.readouterr().out)

    def fail():
        raise DataError("data.csv:3: no caption")
    assert print_result("eval.thing", fail) == 2
    assert capsys.readouterr().err == "eval.thing: error: data.csv:3: no caption\n"
