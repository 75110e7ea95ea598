"""`wds:GLOB`: WebDataset tar shards, as img2dataset and video2dataset write them.

A sample is a group of members sharing a key (`000123.jpg`, `000123.json`, `000123.txt`);
the media member is found by its extension and every other member is ignored. Each shard is
read front to back in tarfile's streaming mode (`r|*`): no index, no seeking, no unpacking,
so it works the same on a local disk and through fsspec on a bucket. The standard `tarfile`
is used rather than the `webdataset` package: reading members in order is all we need, and
it keeps a dependency (and its own shuffling and state we could not checkpoint) out.
"""

from __future__ import annotations

import dataclasses
import tarfile
from collections.abc import Iterator

from data_pipeline import remote_files
from data_pipeline.media_files import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS


def _reason(e: BaseException) -> str:
  text = str(e).splitlines()[0] if str(e) else type(e).__name__
  return f"{type(e).__name__}: {text}" if isinstance(e, EOFError) else text


@dataclasses.dataclass(frozen=True)
class TarReader:
  """`(path, start) -> items` of one shard from its `start`-th media member on; an item is
  `{"name", "data"}`, or `{"name", "error"}` for a member (or the rest of a truncated or
  damaged shard) that cannot be read: that one is skipped and counted downstream."""

  kind: str  # "image" or "video": which extensions are media

  def __call__(self, path: str, start: int = 0) -> Iterator[dict]:
    extensions = IMAGE_EXTENSIONS if self.kind == "image" else VIDEO_EXTENSIONS
    index = 0
    name = path
    try:
      with remote_files.open_file(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
          if not member.isfile() or not member.name.lower().endswith(extensions):
            continue
          name = f"{path}/{member.name}"
          # Read even when resuming past it: a damaged member fails at the same index.
          data = tar.extractfile(member).read()
          if len(data) != member.size:
            raise EOFError(f"member {member.name} is truncated")
          index += 1
          if index > start:  # resuming: members before `start` were given already
            yield {"name": name, "data": data}
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
      if index >= start:  # the error is at the same place on every pass, so resume agrees
        yield {"name": name, "error": f"{name}: unreadable tar shard ({_reason(e)})"}

  def names(self, path: str) -> list[str]:
    """Names of the shard's media members in order, from the tar headers alone (the data is
    skipped): for counting a split's items (`streaming.split_counts`). A damaged shard
    counts up to its damage."""
    extensions = IMAGE_EXTENSIONS if self.kind == "image" else VIDEO_EXTENSIONS
    names = []
    try:
      with remote_files.open_file(path) as f, tarfile.open(fileobj=f, mode="r:*") as tar:
        for member in tar:
          if member.isfile() and member.name.lower().endswith(extensions):
            names.append(f"{path}/{member.name}")
    except (tarfile.TarError, EOFError, OSError, ValueError):
      pass
    return names
