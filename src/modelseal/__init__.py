"""modelseal: protect and prove ownership of large vision models.

Tasks: ``lock`` (IP-CLIP), ``watermark`` (SleeperMark), ``audit`` (CGI-DM), each a function
here that runs exactly what its command runs (``modelseal.api``), with its options in one
config class (``modelseal.config``)::

    import modelseal
    run = modelseal.lock_train(out="runs/lock", steps=50, unauthorized=["builtin:digits/mnist-m"])
    print(run["accuracy"])
"""

__version__ = "0.1.0"

from .api import (Run, finetune, lock_attack, lock_eval, lock_train, lock_verify, watermark_adapt,  # noqa: E402
                  watermark_codec, watermark_embed, watermark_keygen, watermark_prompts, watermark_verify,
                  zoo_build, zoo_eval, run_audit, run_demo)
from .config import (AuditConfig, DemoConfig, FinetuneConfig, LockAttackConfig, LockEvalConfig,  # noqa: E402
                     LockTrainConfig, LockVerifyConfig, WatermarkAdaptConfig, WatermarkCodecConfig, WatermarkEmbedConfig,
                     WatermarkPromptsConfig, WatermarkVerifyConfig, ZooBuildConfig, ZooEvalConfig, load_config)
from .errors import InputError  # noqa: E402

__all__ = [
    "__version__", "Run", "InputError", "load_config",
    "zoo_build", "zoo_eval", "lock_train", "lock_eval", "lock_verify", "lock_attack", "finetune", "run_audit",
    "watermark_keygen", "watermark_codec", "watermark_embed", "watermark_adapt", "watermark_prompts", "watermark_verify", "run_demo",
    "ZooBuildConfig", "ZooEvalConfig", "LockTrainConfig", "LockEvalConfig", "LockVerifyConfig", "LockAttackConfig",
    "FinetuneConfig", "AuditConfig", "WatermarkCodecConfig", "WatermarkEmbedConfig", "WatermarkAdaptConfig", "WatermarkPromptsConfig",
    "WatermarkVerifyConfig", "DemoConfig"]
