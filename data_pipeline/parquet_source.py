"""`parquet:GLOB[:COLUMN]`: parquet files as Hugging Face datasets publishes them.

The media column is either Hugging Face's image/video struct (`{bytes, path}`) or a plain
bytes column. Without COLUMN, the column named "image" ("video" for the AVC codec) is used,
else the first one that holds bytes. Files are read one row group at a time with pyarrow,
so memory stays at one row group whatever the file size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline import remote_files
from jpeglm.errors import JpeglmError


def split_spec(rest: str) -> tuple[str, str]:
  """"GLOB[:COLUMN]" -> (GLOB, COLUMN or ""); a URL's "gs://" is never taken for a column."""
  head, sep, tail = rest.rpartition(":")
  if sep and head and tail and "/" not in tail and "*" not in tail and "." not in tail:
    return head, tail
  return rest, ""


# Column names that Hugging Face datasets and img2dataset use for media, in order of preference.
MEDIA_COLUMNS = {"image": ("image", "img", "jpg", "jpeg", "png", "webp"),
                 "video": ("video", "mp4", "webm")}


def _holds_bytes(field_type: pa.DataType) -> bool:
  if pa.types.is_binary(field_type) or pa.types.is_large_binary(field_type):
    return True
  return pa.types.is_struct(field_type) and field_type.get_field_index("bytes") >= 0


def media_column(schema: pa.Schema, column: str, kind: str, path: str) -> str:
  if column:
    if column not in schema.names:
      raise JpeglmError(f"{path} has no column {column!r} (it has {', '.join(schema.names)})")
    if not _holds_bytes(schema.field(column).type):
      raise JpeglmError(f"{path}: column {column!r} holds {schema.field(column).type}, not "
                        "bytes or a {bytes, path} struct")
    return column
  for name in MEDIA_COLUMNS[kind]:  # as datasets name them, most common first
    if name in schema.names and _holds_bytes(schema.field(name).type):
      return name
  holding = [field.name for field in schema if _holds_bytes(field.type)]
  if len(holding) == 1:
    return holding[0]
  columns = ", ".join(schema.names)
  if holding:
    raise JpeglmError(f"{path}: several bytes columns ({', '.join(holding)}) and none named "
                      f"{'/'.join(MEDIA_COLUMNS[kind])}; name one as parquet:GLOB:COLUMN")
  raise JpeglmError(f"{path} has no bytes column (columns: {columns}); "
                    "name one as parquet:GLOB:COLUMN")


def _row_item(value, path: str, row: int) -> dict:
  # The name is the file and row alone, readable or not: the eval split hashes it, and
  # `names` gives it from the footer.
  name = f"{path}#{row}"
  if isinstance(value, dict):
    inner = f" ({value['path']})" if value.get("path") else ""
    value = value.get("bytes")
    if not value:
      return {"name": name, "error": f"{name}{inner}: no media bytes in this row"}
  if not value:
    return {"name": name, "error": f"{name}: no media bytes in this row"}
  return {"name": name, "data": bytes(value)}


# A unit of a file finer than the file: "PATH::row_group=K" (StreamDataset.share).
ROW_GROUP = "::row_group="


def split_unit(unit: str) -> tuple[str, int | None]:
  """"PATH::row_group=K" -> (PATH, K); a plain path -> (path, None)."""
  path, sep, group = unit.rpartition(ROW_GROUP)
  return (path, int(group)) if sep else (unit, None)


@dataclasses.dataclass(frozen=True)
class ParquetReader:
  """`(unit, start) -> items` from row `start` of the unit on: `{"name", "data"}` per row,
  `{"name", "error"}` for an empty row and for each row of a row group that cannot be read
  (rows are counted from the footer, so positions stay the same whether a row group reads or
  not). A unit is a file or one of its row groups (`units`); an item's name is
  "FILE#ROW" with ROW counted in the file either way."""

  column: str
  kind: str  # "image" or "video"

  def units(self, unit: str) -> list[str]:
    """The file's row groups as units, to share one file among several readers."""
    path, group = split_unit(unit)
    if group is not None:
      return [unit]
    with remote_files.open_file(path) as f:
      groups = pq.ParquetFile(f).metadata.num_row_groups
    return [f"{path}{ROW_GROUP}{g}" for g in range(groups)] if groups > 1 else [path]

  def __call__(self, unit: str, start: int = 0) -> Iterator[dict]:
    path, only_group = split_unit(unit)
    try:
      f = remote_files.open_file(path)
      parquet = pq.ParquetFile(f)
      column = media_column(parquet.schema_arrow, self.column, self.kind, path)
    except JpeglmError:
      raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
      yield {"name": path, "error": f"{path}: unreadable parquet file ({str(e).splitlines()[0]})"}
      return
    with f:
      first_row = 0  # in the file
      given = 0  # rows of this unit before the current group
      for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        mine = only_group is None or group == only_group
        if not mine or given + rows <= start:
          given += rows if mine else 0
          first_row += rows
          continue
        try:
          values = parquet.read_row_group(group, columns=[column]).column(0).to_pylist()
          if len(values) != rows:
            raise ValueError(f"{len(values)} rows read, the footer says {rows}")
        except Exception as e:  # noqa: BLE001 - one damaged row group only skips its rows
          reason = str(e).splitlines()[0] if str(e) else type(e).__name__
          reason = "".join(c if c.isprintable() else "?" for c in reason)  # thrift quotes bytes
          values = [RuntimeError(reason)] * rows
        for row in range(max(start - given, 0), rows):
          value = values[row]
          if isinstance(value, Exception):
            name = f"{path}#{first_row + row}"
            yield {"name": name, "error": f"{name}: unreadable row group {group} ({value})"}
          else:
            yield _row_item(value, path, first_row + row)
        given += rows
        first_row += rows

  def names(self, path: str) -> list[str]:
    """Item names in order, from the footer alone (no media is read): for counting a
    split's items (`streaming.split_counts`)."""
    with remote_files.open_file(path) as f:
      rows = pq.ParquetFile(f).metadata.num_rows
    return [f"{path}#{row}" for row in range(rows)]
