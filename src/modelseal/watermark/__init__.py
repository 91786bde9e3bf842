"""SleeperMark (Wang et al., CVPR 2025): a trigger-activated watermark in a text-to-image
model that survives fine-tuning, verified black-box from generated images.

keys.py: the owner's secret key and the message derived from it. Stage 1, the latent
watermark codec: codec.py (the secret encoder + extractor networks), codec_folder.py (its
folder and the owner's VAE), codec_training.py (its loss and training), codec_pixels.py (on
pixels: embed, read bits, bit accuracy). robustness.py: the mark beside the thief's utility
at an attack point."""
