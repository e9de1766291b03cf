"""A TFDS ``DatasetBuilder`` holding the same records, so ``tfds.data_source(...)`` feeds the pipeline too.

Every TFDS example has two features: ``record`` (bytes: the record exactly as encoded by
``records.encode_record``, decoded with ``records.decode_record``) and ``key`` (text; ``tfds.data_source`` returns it as UTF-8 bytes). Files are
written as ArrayRecord, which TFDS reads without TensorFlow (``tensorflow-datasets`` with
``array_record``; TensorFlow is not needed to build or read).

    builder = SeedreamRecords(data_dir="~/tensorflow_datasets", records_dir="data/photos")
    builder.download_and_prepare(file_format="array_record")      # once
    ds = tfds.data_source("seedream_records", data_dir="~/tensorflow_datasets")["train"]
    rec = records.decode_record(ds[0]["record"])
    src = TfdsRecordSource(ds)      # same interface as arrayrecord_io.ArrayRecordSource

The records come from complete seedream ArrayRecord datasets (``records_dir``: one directory or a
list), written by ``tools/ingest.py`` or the synthetic world. ``split`` names the split (default
``train``); to hold several corpora, give each its own ``data_dir``. TFDS
stores examples in the order of the hash of their keys, so indices differ from the source
dataset's; the set of records is the same, byte for byte.
"""
import os
from typing import Optional, Sequence, Union

import numpy as np
import tensorflow_datasets as tfds

from seedream_jax.data import arrayrecord_io, records as records_lib


class SeedreamRecords(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of seedream records (see the module docstring); ``records_dir`` only to build."""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": f"record schema v{records_lib.SCHEMA_VERSION}"}

    def __init__(self, *, records_dir: Union[str, Sequence[str], None] = None, split: str = "train", **kwargs):
        self._records_dir = records_dir
        self._split = split
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Seedream image-text records (image bytes as given, captions by language and type, "
                        f"metadata), schema v{records_lib.SCHEMA_VERSION}; decode with "
                        "seedream_jax.data.records.decode_record.",
            features=tfds.features.FeaturesDict({
                "record": tfds.features.Scalar(dtype=np.object_, doc="encoded seedream record (bytes)"),
                "key": tfds.features.Text(doc="record key"),
            }),
        )

    def _split_generators(self, dl_manager):
        if self._records_dir is None:
            raise ValueError("SeedreamRecords needs records_dir=<seedream ArrayRecord dataset> to be built")
        return {self._split: self._generate_examples(self._records_dir)}

    def _generate_examples(self, records_dir):
        source = arrayrecord_io.ArrayRecordSource(records_dir)
        for i in range(len(source)):
            data = source[i]
            key = records_lib.decode_header(data)["key"]
            yield f"{i:012d}", {"record": data, "key": key}


def build(records_dir: Union[str, Sequence[str]], data_dir: str, split: str = "train") -> SeedreamRecords:
    """Builds (once) the TFDS dataset of ``records_dir`` under ``data_dir``; returns the builder."""
    builder = SeedreamRecords(records_dir=records_dir, split=split, data_dir=os.path.expanduser(data_dir),
                              file_format="array_record")
    builder.download_and_prepare()
    return builder


class TfdsRecordSource:
    """Random-access source over a TFDS split of seedream records: ``source[i]`` is the encoded
    record bytes (or a ``Record`` if ``decode``), like ``arrayrecord_io.ArrayRecordSource``."""

    def __init__(self, tfds_source, decode: bool = False):
        self.tfds_source, self.decode = tfds_source, decode

    def __len__(self) -> int:
        return len(self.tfds_source)

    def _out(self, example):
        data = example["record"]
        return records_lib.decode_record(data) if self.decode else data

    def __getitem__(self, index: int):
        return self._out(self.tfds_source[index])

    def __getitems__(self, indices: Sequence[int]):
        return [self._out(e) for e in self.tfds_source.__getitems__(list(indices))]


def data_source(data_dir: str, split: str = "train", decode: bool = False,
                name: Optional[str] = None) -> TfdsRecordSource:
    """``tfds.data_source`` of a built ``SeedreamRecords`` dataset, wrapped as a record source."""
    ds = tfds.data_source(name or SeedreamRecords.name, data_dir=os.path.expanduser(data_dir))
    if split not in ds:
        raise KeyError(f"split {split!r} not in {sorted(ds)} under {data_dir}")
    return TfdsRecordSource(ds[split], decode=decode)
