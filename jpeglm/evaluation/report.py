"""`eval.json` as a table for the terminal."""

from __future__ import annotations

SMALL_SET_NOTE = ("FID is biased upward on small sets (here {n} images against the paper's "
                  "1,000-5,000); compare numbers only at equal image counts and sizes.")


def format_table(report: dict) -> str:
  """ratio | FID | valid-decode rate | tokens/s, then bits per byte and the small-set note."""
  seeds = report["seeds"]
  header = ("ratio", "rows", f"FID (mean of {len(seeds)} seed{'s' * (len(seeds) > 1)})",
            "valid-decode rate", "tokens/s")
  lines = [header]
  for r in report["results"]:
    fid = f"{r['fid']:.2f}" + (f" +- {r['fid_std']:.2f}" if len(seeds) > 1 else "")
    lines.append((f"{r['ratio']:g}", str(r["prompt_rows"]), fid,
                  f"{r['valid_decode_rate']:.3f}", f"{r['tokens_per_second']:,.0f}"))
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  rows = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
  rows.insert(1, "-+-".join("-" * w for w in widths))
  sample = report["sample"]
  return "\n".join([
      f"step {report['step']}, {report['num_images']} images from {report['images']} at "
      f"{report['codec_size']}x{report['codec_size']}, syntax_safe={sample.get('syntax_safe')}",
      *rows,
      f"bits per byte on the whole images: {report['bits_per_byte']:.4f}; tokens/s is wall "
      "time of generation, compilation included",
      *_parts_line(report.get("bits_by_part")),
      *_protocol_line(report.get("paper_protocol")),
      f"note: {report['note']}"])


def _protocol_line(estimate: dict | None) -> list[str]:
  """The paper's protocol at this run's sampling speed (jpeglm.fit.decode_bound)."""
  if not estimate:
    return []
  line = (f"the paper's protocol ({estimate['num_images']:,} images x {len(estimate['ratios'])} "
          f"ratios x {estimate['seeds']} seeds, {estimate['generated_tokens'] / 1e6:.1f}M tokens "
          f"generated) at {estimate['tokens_per_second']:,.0f} tokens/s: "
          f"{estimate['hours']:,.1f} h")
  if estimate["bound_share"] is not None:
    line += (f"; {estimate['bound_share']:.1%} of this chip's memory-bandwidth bound "
             f"({estimate['floor_hours']:,.1f} h at the bound)")
  else:
    line += "; no memory-bandwidth bound known for this device"
  return [line]


def _parts_line(parts: dict | None) -> list[str]:
  """Where the bits go, per image (jpeglm.evaluation.stream_parts)."""
  if not parts:
    return []
  cells = [f"{name.replace('_', ' ')} {p['bits']:,.0f} bits in {p['bytes']:,.0f} bytes "
           f"({p['bits_per_byte']:.2f}/byte)" for name, p in parts.items()]
  return ["bits per image by part: " + "; ".join(cells)]
