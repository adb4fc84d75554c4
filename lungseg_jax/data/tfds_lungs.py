"""TFDS builder for "Finding and Measuring Lungs in CT Data" (Kaggle, the 2D part).

Built from a manually downloaded folder to array_record and read back with
``tfds.data_source`` as numpy; TensorFlow is not needed for either. Images are
stored losslessly as int16 Hounsfield tensors (zlib), masks as uint8 0/1::

    from lungseg_jax.data import tfds_lungs
    slices = tfds_lungs.load_slices("/data/finding-lungs-in-ct-data", "/data/tfds")
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from lungseg_jax.data import slices as data

NAME = "finding_lungs_in_ct"


class FindingLungsInCt(tfds.core.GeneratorBasedBuilder):
    """Axial CT slices (int16 HU) with binary lung masks and the slice names."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The 2D part: 2d_images/*.tif with 2d_masks/*.tif."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download https://www.kaggle.com/datasets/kmader/finding-lungs-in-ct-data
    (`kaggle datasets download kmader/finding-lungs-in-ct-data`), unzip it, and pass the
    folder holding {data.IMAGE_DIR}/ and {data.MASK_DIR}/ as manual_dir
    (`--config.data.path=DIR` with `--config.data.source=tfds`).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        zlib = tfds.features.Encoding.ZLIB
        return tfds.core.DatasetInfo(
            builder=self,
            description="Lung masks for axial CT slices (Kaggle kmader/finding-lungs-in-ct-data).",
            features=tfds.features.FeaturesDict({
                "name": tfds.features.Text(),
                "image": tfds.features.Tensor(shape=(None, None), dtype=np.int16, encoding=zlib),
                "mask": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding=zlib),
            }),
            supervised_keys=("image", "mask"),
            disable_shuffling=True,  # examples stay in the folder's (sorted) name order
            homepage="https://www.kaggle.com/datasets/kmader/finding-lungs-in-ct-data",
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(os.fspath(dl_manager.manual_dir))}

    def _generate_examples(self, path):
        slices = data.read_folder(path)
        for name, image, mask in zip(slices.names, slices.images, slices.masks):
            stored = image.astype(np.int16)
            if not np.array_equal(stored, image):
                raise ValueError(f"{path}/{data.IMAGE_DIR}/{name}: values are not int16 HU")
            yield name, {"name": name, "image": stored, "mask": mask}


def load_slices(manual_dir: str, data_dir: str = "") -> data.Slices:
    """Every example, building the dataset from ``manual_dir`` into ``data_dir`` first if needed.

    ``data_dir`` '' is TFDS's default (~/tensorflow_datasets). Raises ValueError when
    ``data_dir`` holds a build of a different folder (other slice names).
    """
    source = tfds.data_source(
        NAME, split="train", data_dir=data_dir or None,
        download_and_prepare_kwargs={
            "file_format": "array_record",
            "download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)})
    examples = [source[i] for i in range(len(source))]
    names = [e["name"].decode() for e in examples]
    has_folder = os.path.isdir(os.path.join(manual_dir, data.IMAGE_DIR))
    if has_folder and names != sorted(data.paired_tiff_names(manual_dir)[0]):
        raise ValueError(f"the {NAME} build in {data_dir or 'the default TFDS data_dir'!r} holds "
                         f"other slices than {manual_dir!r}; delete its {NAME}/ folder to rebuild, "
                         "or set config.data.tfds_data_dir to a new folder")
    return data.Slices(names, [e["image"] for e in examples], [e["mask"] for e in examples])
