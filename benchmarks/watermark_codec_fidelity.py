"""What the stage-1 residual itself costs an image: the ceiling on how hidden a sleeper can be.

    python benchmarks/watermark_codec_fidelity.py [--codec tiny:codec] [--model tiny:t2i]
                                                  [--scales 0.5 1 2 3] [--per-domain 64]

Stage 2 teaches the UNet to add delta = E(m) (times --delta-scale) to its x0 estimate under
the trigger, so a triggered image can look no closer to the clean one than dec(z + s delta)
looks to dec(z). On --per-domain test images of each built-in digits domain (latents z: the
VAE posterior mean), random messages per image:
  recon     the VAE's own reconstruction dec(z) against the image (what the VAE allows at all)
  residual  dec(z + s delta) against dec(z): PSNR, SSIM, for each scale s
  read      bit accuracy of dec(z + s delta) rounded to 8 bits and read back by the codec
Also the residual's size against the latent's (RMS) and the latent values per message bit
(the paper's SD setting: 4 x 64 x 64 latent values for 48 bits, 341 per bit).
"""
from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", default="tiny:codec")
    ap.add_argument("--model", default="tiny:t2i")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    ap.add_argument("--per-domain", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from modelseal.data.digits import DOMAINS, load_digits_domain
    from modelseal.models.diffusion import load_t2i
    from modelseal.quality import psnr, ssim
    from modelseal.watermark.codec import Codec
    from modelseal.watermark.codec_pixels import decode_all, encode_all, extract_bits

    model, codec = load_t2i(args.model), Codec.from_pretrained(args.codec)
    x = torch.cat([torch.from_numpy(load_digits_domain(d, "test").images[:args.per_domain]).permute(0, 3, 1, 2)
                   for d in DOMAINS]).float() / 255
    z = encode_all(model, x)
    recon = decode_all(model, z)
    g = torch.Generator().manual_seed(args.seed)
    bits = torch.randint(0, 2, (len(z), codec.k), generator=g).float()
    with torch.no_grad():
        delta = codec.residual(bits)
    print(f"{len(z)} images; latent {tuple(z.shape[1:])}, {z[0].numel() / codec.k:.0f} latent values per bit "
          f"(SD 1.5 with 48 bits: 341); latent RMS {float(z.pow(2).mean().sqrt()):.3f}, "
          f"delta RMS {float(delta.pow(2).mean().sqrt()):.3f}")
    print(f"VAE reconstruction against the image: PSNR {float(psnr(recon, x).mean()):.1f} dB, "
          f"SSIM {float(ssim(recon, x).mean()):.3f}")
    print(f"{'scale':>6}{'PSNR vs dec(z)':>16}{'SSIM':>8}{'bit accuracy':>14}")
    for s in args.scales:
        img = decode_all(model, z + s * delta)
        read = extract_bits(codec, model, (img * 255).round() / 255)
        print(f"{s:>6g}{float(psnr(img, recon).mean()):>14.1f} dB{float(ssim(img, recon).mean()):>8.3f}"
              f"{float((read == bits).float().mean()):>14.3f}")


if __name__ == "__main__":
    main()
