import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small SynthDerm set shared by the format tests (generated once per session)."""
    from dermvlm.config import get_config
    from dermvlm.synth.writer import generate
    config = get_config("tiny", ["synth.n=40", "synth.seed=7"]).synth
    out = tmp_path_factory.mktemp("synth")
    generate(config, out, progress=False)
    return out
