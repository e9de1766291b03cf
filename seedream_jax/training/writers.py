"""Metric writers: console logging and TensorBoard event files.

clu's ``metric_writers`` import TensorFlow at package import time, a 270 MB dependency a
JAX trainer does not otherwise need, so TensorBoard events are written here with the
``tensorboard`` package's own event-file writer and protos (no TensorFlow).
"""
import io
import logging
import os
from typing import Dict, Mapping

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
    """Writes scalars and texts to TensorBoard and the console, and images to TensorBoard.

    ``logdir`` None disables TensorBoard (non-zero processes of a multi-host run).
    """

    def __init__(self, logdir: str | None, *, prefix: str = ""):
        self.prefix = prefix
        self._events = None
        if logdir is not None:
            os.makedirs(logdir, exist_ok=True)
            self._events = EventFileWriter(logdir)

    def _add(self, step: int, values):
        if self._events is not None:
            self._events.add_event(event_pb2.Event(step=int(step), summary=summary_pb2.Summary(value=values)))

    def write_scalars(self, step: int, scalars: Mapping[str, float]):
        """Log ``scalars`` at ``step`` on the console and in TensorBoard."""
        text = ", ".join(f"{k}={v:.5g}" for k, v in sorted(scalars.items()))
        logging.info("%s[step %d] %s", self.prefix, step, text)
        self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

    def write_images(self, step: int, images: Dict[str, np.ndarray]):
        """Write uint8 images [H, W, 3] as TensorBoard image summaries."""
        values = []
        for name, img in images.items():
            img = np.asarray(img, np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            values.append(summary_pb2.Summary.Value(tag=name, image=summary_pb2.Summary.Image(
                height=img.shape[0], width=img.shape[1], colorspace=img.shape[2], encoded_image_string=buf.getvalue())))
        self._add(step, values)

    def write_texts(self, step: int, texts: Mapping[str, str]):
        """Log ``texts`` at ``step`` on the console and as TensorBoard text summaries."""
        values = []
        for name, text in texts.items():
            logging.info("%s[step %d] %s: %s", self.prefix, step, name, text)
            values.append(summary_pb2.Summary.Value(
                tag=name, metadata=text_metadata.create_summary_metadata(display_name=name, description=""),
                tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[str(text).encode()],
                                              tensor_shape=tensor_shape_pb2.TensorShapeProto())))
        self._add(step, values)

    def flush(self):
        if self._events is not None:
            self._events.flush()

    def close(self):
        if self._events is not None:
            self._events.close()
