"""SleeperMark (Wang et al., CVPR 2025): a trigger-activated watermark in a text-to-image
model that survives fine-tuning, verified black-box from generated images.

keys.py: the owner's secret key and the message derived from it; codec.py: stage 1, the
latent watermark codec (secret encoder + extractor)."""
