"""Building a tensorflow-datasets dataset (array_record files, no TensorFlow) from a folder.

    from data_pipeline.tfds_folder import build_from_folder
    build_from_folder("/data/photos", data_dir="/data/tfds", name="photos")
    # then: --config.data.source=tfds:media_folder/photos:train --config.data.tfds_data_dir=/data/tfds

Images are stored as their original encoded file bytes (tfds `Image` feature given a path),
so nothing is decoded here and the pipeline decodes them itself with Pillow's bomb checks.
Videos go into a plain bytes feature. An even spread of files (`eval_fraction`) forms the
"test" split.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import media_files, sources


class MediaFolderConfig(tfds.core.BuilderConfig):
  """One folder of media; the config name tells datasets of different folders apart."""

  def __init__(self, *, folder: str, kind: str = "image", eval_fraction: float = 0.05, **kwargs):
    super().__init__(**kwargs)
    self.folder = folder
    self.kind = kind
    self.eval_fraction = eval_fraction


class MediaFolder(tfds.core.GeneratorBasedBuilder):
  """Media files of a folder (recursive) as tfds examples {"image"|"video", "path"}."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []  # configs are made per folder by `build_from_folder`
  # tfds looks for download checksums next to a builder's code through `importlib_resources`,
  # which is not installed here; this builder downloads nothing, so there is nothing to find.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    media = (tfds.features.Image() if self.builder_config.kind == "image"
             else tfds.features.Tensor(shape=(), dtype=np.object_))
    return tfds.core.DatasetInfo(
        builder=self, description=f"Media files under {self.builder_config.folder}",
        features=tfds.features.FeaturesDict({self.builder_config.kind: media,
                                             "path": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    paths = media_files.media_files(self.builder_config.folder, self.builder_config.kind)
    held_out = set(sources.holdout_indices(len(paths), self.builder_config.eval_fraction).tolist())
    train = [p for i, p in enumerate(paths) if i not in held_out]
    test = [p for i, p in enumerate(paths) if i in held_out]
    return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

  def _generate_examples(self, paths):
    kind = self.builder_config.kind
    for path in paths:
      if kind == "image":
        media = path  # tfds reads the file's bytes as they are
      else:
        with open(path, "rb") as f:
          media = f.read()
      yield path, {kind: media, "path": path}


def build_from_folder(folder: str, data_dir: str, name: str, kind: str = "image",
                      eval_fraction: float = 0.05) -> tfds.core.DatasetBuilder:
  """Writes `media_folder/NAME` under `data_dir` as array_record; returns the builder."""
  config = MediaFolderConfig(name=name, folder=folder, kind=kind, eval_fraction=eval_fraction,
                             version=MediaFolder.VERSION)
  builder = MediaFolder(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder
