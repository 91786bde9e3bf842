"""Building the tiny zoo (`modelseal zoo build`): an application above the tasks.

It trains four models (CLIP, digit judge, VAE, UNet; architectures in models/tiny.py) and
the watermark task's stage-1 codec, deterministically, on the built-in digits, by the recipe
config.ZooConfig (its presets: config.ZOO_PRESETS).

  stages.py    the training stages, one function each
  evaluate.py  what a built zoo scores (CLIP zero-shot, judged T2I prompt accuracy)
  build.py     build_zoo: the stages in order, resumable, published atomically
"""
