"""Keep transformers / diffusers / huggingface_hub quiet while models load.

Their weight-loading progress bars ("Loading weights: 100%|...") and info notices would
interleave with modelseal's own progress lines and bury a one-line error; every loader in
`models/` (and the audit's feature model) calls `quiet_loading()` first, so the Python API is
as quiet as the command line. Errors still surface: as exceptions, which the loaders turn
into one-line InputErrors.
"""
from __future__ import annotations

import os


def quiet_loading() -> None:
    """Switch the libraries' progress bars off and their logging down to errors."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import diffusers.utils.logging as diffusers_logging
        import transformers.utils.logging as transformers_logging
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:
        return
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    # diffusers also logs, at error level, the exception it then raises: our loaders report it once
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    disable_progress_bars()
