"""Attacks a model owner must survive: image distortions and model changes (fine-tuning,
pruning, quantization). Used by the watermark and audit tasks; imports no task."""
