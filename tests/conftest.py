import os

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test sees an empty $MODELSEAL_HOME, so the shipped zoo is the one in use."""
    monkeypatch.setenv("MODELSEAL_HOME", str(tmp_path_factory.mktemp("home")))
