"""A video `eval.json` (jpeglm.evaluation.video_protocol) as a table for the terminal."""

from __future__ import annotations


def format_video_table(report: dict) -> str:
  """sampling | valid-decode rate | PSNR | SSIM | frames continued | share that ran out of
  context | tokens/s, the baseline row, then bits per byte and where they go."""
  s = report["codec_settings"]
  baseline = report["baseline_repeat_last_frame"]
  header = ("sampling", "valid-decode rate", "PSNR dB", "SSIM", "frames continued",
            "out of context", "tokens/s")
  lines = [header]
  for mode, r in report["modes"].items():
    lines.append((mode, f"{r['valid_decode_rate']:.3f}", f"{r['psnr']:.2f}", f"{r['ssim']:.3f}",
                  f"{r['frames_continued']:.1f}", f"{r['out_of_context_rate']:.3f}",
                  f"{r['tokens_per_second']:,.0f}"))
  lines.append(("repeat last prompt frame", "", f"{baseline['psnr']:.2f}",
                f"{baseline['ssim']:.3f}", f"{report['true_frames_continued']:.1f}", "", ""))
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  rows = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
  rows.insert(1, "-+-".join("-" * w for w in widths))
  parts = report["bits_by_part"]
  cells = [f"{name.replace('_', ' ')} {p['bits']:,.0f} bits in {p['bytes']:,.0f} bytes "
           f"({p['bits_per_byte']:.2f}/byte)" if p["bytes"] else
           f"{name.replace('_', ' ')} {p['bits']:,.0f} bits"  # EOS: bits, no bytes
           for name, p in parts.items() if p["bytes"] or p["bits"]]
  seeds = report["seeds"]
  return "\n".join([
      f"step {report['step']}, {report['num_videos']} clips from {report['videos']} at "
      f"{s['width']}x{s['height']}, {s['fps']} fps: prompt {report['prompt_frames']} frames, "
      f"continue {report['true_frames_continued']:g} (mean of {len(seeds)} "
      f"seed{'s' * (len(seeds) > 1)})",
      *rows,
      f"bits per byte on the whole clips: {report['bits_per_byte']:.4f}",
      "bits per clip by part: " + "; ".join(cells),
      f"note: {report['note']}"])
