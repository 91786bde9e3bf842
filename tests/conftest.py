import os

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Each test sees an empty $MODELSEAL_HOME, so the shipped zoo is the one in use."""
    monkeypatch.setenv("MODELSEAL_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def random_clip_dir(tmp_path_factory):
    """A small random CLIP saved with save_pretrained: loaded by path like a real checkpoint."""
    import torch
    from transformers import CLIPModel

    from modelseal.models.tokenizer import build_tokenizer
    from modelseal.models.tiny import clip_config

    torch.manual_seed(0)
    tok = build_tokenizer(max_length=20)
    model = CLIPModel(clip_config(len(tok), tok.bos_token_id, tok.eos_token_id, 32))
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    tok.save_pretrained(str(folder))
    return folder


_USER_HOME = os.environ.get("MODELSEAL_HOME")  # before the per-test isolation above replaces it


@pytest.fixture(scope="session")
def real_layout():
    """build(name) -> the real-layout folder (published config, random weights), cached across
    sessions in the user's $MODELSEAL_HOME/real-layout (tests marked `real` only: GBs each)."""
    from pathlib import Path

    from modelseal.models.real_layout import build

    root = Path(_USER_HOME or Path.home() / ".cache" / "modelseal") / "real-layout"
    return lambda name: build(name, root, log=lambda s: None)
