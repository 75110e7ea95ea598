"""One macroblock's syntax in an I or P slice (ITU-T H.264 7.3.5) with no neighbours.

With one macroblock per slice, the macroblocks left of and above this one are in other slices
and so unavailable (6.4.x). That decides which intra modes decode (8.3.1.2, 8.3.3, 8.3.4 need
the samples a mode reads; FFmpeg's check_intra4x4_pred_mode / check_intra_pred_mode reject the
others): Intra16x16 and chroma prediction are DC only; an Intra4x4 block on the top row of the
macroblock may use horizontal, DC or horizontal-up, one in the left column vertical, DC,
diagonal-down-left or vertical-left, the top-left block DC alone. Their predicted mode is DC
wherever a neighbour is missing, which maps allowed modes onto rem_intra4x4_pred_mode values.

Motion vectors: each mvd component keeps within the level's MV range (Table A-1), which is the
MV itself for P_L0_16x16 (its predictor is 0 without neighbours). ref_idx is te(v) over the
slice's active references. I_PCM is accepted (aligned, 384 free bytes).
"""

from __future__ import annotations

from jpeglm.codecs import h264_codes as hc
from jpeglm.codecs import h264_residual as residual
from jpeglm.codecs.h264_params import HORIZONTAL_MV_LIMIT, ParameterSets, vertical_mv_limit
from jpeglm.codecs.h264_vlc_tables import CBP_INTER, CBP_INTRA

(MB_SKIP_RUN, MB_TYPE, I4_FLAG, I4_REM, CHROMA_PRED, CBP, QP_DELTA, SUB_TYPE, REF_IDX,
 MVD) = range(20, 30)
PCM = (31,)  # I_PCM: pcm_alignment_zero_bits then 256 + 128 sample bytes
PCM_BYTES = 384

I_NXN, I_PCM = 0, 25
# Intra16x16 mb_types 1..24 whose prediction mode ((t - 1) % 4) is DC (2)
_I16_DC = tuple(t for t in range(1, 25) if (t - 1) % 4 == 2)
_I_TYPES = (I_NXN, *_I16_DC, I_PCM)
_SUB_MVS = (1, 2, 2, 4)  # motion vectors of sub_mb_type P_L0_8x8, 8x4, 4x8, 4x4
_P_PARTITIONS = (1, 2, 2)  # P_L0_16x16, P_L0_L0_16x8, P_L0_L0_8x16
P_8X8, P_8X8_REF0 = 3, 4


def _rem_modes_allowed(blk: int) -> tuple[int, ...]:
  """Allowed rem_intra4x4_pred_mode values (prev_intra4x4_pred_mode_flag = 1, the predicted
  mode, is allowed everywhere)."""
  x, y = residual.luma_xy(blk)
  if x == 0 and y == 0:
    return ()  # DC only, which is the predicted mode
  if y == 0:  # no samples above: horizontal (1), horizontal-up (8) -> rem 1, 7
    return (1, 7)
  if x == 0:  # no samples to the left: vertical (0), diag-down-left (3), vertical-left (7)
    return (0, 2, 6)
  return tuple(range(8))


_I4_REMS = tuple(_rem_modes_allowed(b) for b in range(16))


def start(is_p: bool, num_refs: int):
  """The first state of slice_data: mb_skip_run in P slices, mb_type in I slices."""
  return (MB_SKIP_RUN, num_refs) if is_p else (MB_TYPE, -1)


class Macroblock:
  def __init__(self, codes: hc.Codes, ps: ParameterSets):
    self.codes = codes
    self.residual = residual.Residual(codes)
    # Levels 3.1 and up allow 16 motion vectors per two macroblocks (Table A-1 MaxMvsPer2Mb):
    # there, P_8x8 keeps to 8x8 sub-macroblocks (4 vectors each).
    self.sub_types = (0,) if ps.level_idc >= 31 else (0, 1, 2, 3)
    self.mv_ranges = (hc.se_range(-HORIZONTAL_MV_LIMIT, HORIZONTAL_MV_LIMIT - 1),
                      hc.se_range(-vertical_mv_limit(ps), vertical_mv_limit(ps) - 1))

  def code(self, s) -> int:
    tag = s[0]
    root = self.codes.root
    if tag >= residual.RES_COEFF_TOKEN:
      return self.residual.code(s)
    if tag == MB_SKIP_RUN:  # one macroblock per slice: a run of 0 or 1
      return root(("ue", 0, 1), lambda: hc.GolombCode(hc.ue_range(0, 1)))
    if tag == MB_TYPE:
      if s[1] < 0:
        return root(("mb_type I",), lambda: hc.GolombCode(hc.ue_values(_I_TYPES)))
      return root(("mb_type P",), lambda: hc.GolombCode(
          hc.ue_values((0, 1, 2, P_8X8, P_8X8_REF0, *(5 + t for t in _I_TYPES)))))
    if tag == I4_FLAG:
      values = [1] + ([0] if _I4_REMS[s[1]] else [])
      return root(("u1", *values), lambda: hc.fixed_words(1, values))
    if tag == I4_REM:
      rems = _I4_REMS[s[1]]
      return root(("u3", rems), lambda: hc.fixed_words(3, rems))
    if tag == CHROMA_PRED:  # DC (0) only
      return root(("ue", 0, 0), lambda: hc.GolombCode(hc.ue_range(0, 0)))
    if tag == CBP:
      table = CBP_INTRA if s[1] else CBP_INTER
      return root(("cbp", s[1]), lambda: hc.GolombCode(hc.ue_range(0, 47), table.__getitem__))
    if tag == QP_DELTA:
      return root(("se", -26, 25), lambda: hc.se_code(hc.se_range(-26, 25)))
    if tag == SUB_TYPE:
      return root(("sub_mb_type", self.sub_types),
                  lambda: hc.GolombCode(hc.ue_values(self.sub_types)))
    if tag == REF_IDX:
      top = s[3] - 1
      return root(("te", top), lambda: hc.te_code(top))
    vertical = s[1] % 2
    return root(("mvd", vertical), lambda: hc.se_code(self.mv_ranges[vertical]))

  def after(self, s, value):
    tag = s[0]
    if tag >= residual.RES_COEFF_TOKEN:
      return self.residual.after(s, value)
    if tag == MB_SKIP_RUN:
      return residual.MB_DONE if value else (MB_TYPE, s[1])
    if tag == MB_TYPE:
      num_refs = s[1]
      if num_refs >= 0:  # P slice
        if value < 5:
          return self._inter(value, num_refs)
        value -= 5
      if value == I_NXN:
        return (I4_FLAG, 0)
      if value == I_PCM:
        return PCM
      return (CHROMA_PRED, ((value - 1) // 4 % 3) << 4 | (15 if value > 12 else 0))
    if tag == I4_FLAG:
      return (I4_REM, s[1]) if value == 0 else self._next_i4(s[1])
    if tag == I4_REM:
      return self._next_i4(s[1])
    if tag == CHROMA_PRED:
      if s[1] < 0:
        return (CBP, True)
      return (QP_DELTA, True, s[1])  # Intra16x16: mb_qp_delta is always present
    if tag == CBP:
      return (QP_DELTA, False, value) if value else residual.MB_DONE
    if tag == QP_DELTA:
      return residual.start(s[1], s[2])
    if tag == SUB_TYPE:
      _, i, mvs, mb_type, num_refs = s
      mvs += _SUB_MVS[value]
      if i < 3:
        return (SUB_TYPE, i + 1, mvs, mb_type, num_refs)
      if mb_type == P_8X8 and num_refs > 1:
        return (REF_IDX, 4, mvs, num_refs)
      return (MVD, 2 * mvs)
    if tag == REF_IDX:
      _, left, mvs, num_refs = s
      return (REF_IDX, left - 1, mvs, num_refs) if left > 1 else (MVD, 2 * mvs)
    return (MVD, s[1] - 1) if s[1] > 1 else (CBP, False)

  def _inter(self, mb_type, num_refs):
    if mb_type >= P_8X8:
      return (SUB_TYPE, 0, 0, mb_type, num_refs)
    parts = _P_PARTITIONS[mb_type]
    if num_refs > 1:  # ref_idx only when more than one reference is active
      return (REF_IDX, parts, parts, num_refs)
    return (MVD, 2 * parts)

  @staticmethod
  def _next_i4(blk):
    return (I4_FLAG, blk + 1) if blk < 15 else (CHROMA_PRED, -1)
