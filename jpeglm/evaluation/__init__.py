"""Evaluation as the paper does it: prefix completion of real images at row ratios, scored by
FID with the standard Inception-v3 FID weights, plus bits per byte and the valid-decode rate;
for videos, continuation of 10-frame prompts scored by PSNR/SSIM (video_protocol)."""
