"""TensorBoard event files of a training run (RUN/tensorboard/), written by rank 0 with
tensorboardX's protocol buffers: TensorBoard itself is needed only to look at them.

One file per epoch, named by the epoch, keeps the folder true across a resume: a worker or node
lost mid-epoch resumes from the last epoch's checkpoint and that epoch is trained again and its
file rewritten whole under the same name, so no step is recorded twice or lost; files of epochs
past the checkpoint are removed when training starts. An object store cannot append, so the
epoch's file is rewritten whole: at the end of the epoch, and during it at most once a minute
(an epoch's scalars are a few MB at most).
"""
from __future__ import annotations

import re
import struct
import time

import pyarrow.fs as pafs
from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import masked_crc32c

import storage as uris

FOLDER = "tensorboard"
NAME = "events.out.tfevents.epoch_{epoch:06d}"  # TensorBoard reads every file whose name holds "tfevents"
EPOCH_OF_NAME = re.compile(r"events\.out\.tfevents\.epoch_(\d+)$")
REWRITE_SECONDS = 60.0


def record(event: event_pb2.Event) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the serialized event, its masked CRC-32C."""
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class EpochEvents:
    """The scalars of one epoch, kept as encoded records and written as one event file."""

    def __init__(self, folder: str, epoch: int) -> None:
        self.uri = uris.join(folder, NAME.format(epoch=epoch))
        self.records = [record(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))]
        self.written = time.monotonic()

    def add(self, step: int, wall_time: float, scalars: dict[str, float]) -> None:
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        self.records.append(record(event_pb2.Event(wall_time=wall_time, step=step,
                                                   summary=summary_pb2.Summary(value=values))))

    def write(self, at_least_every: float = 0.0) -> None:
        """Rewrite the file with every record so far (when at_least_every seconds have passed)."""
        if time.monotonic() - self.written >= at_least_every:
            uris.write_bytes(self.uri, b"".join(self.records))
            self.written = time.monotonic()


def prune(folder: str, epochs_done: int) -> list[str]:
    """Remove the event files of epochs after epochs_done (left by an attempt whose checkpoint
    was not kept); returns the removed paths."""
    fs, path = uris.resolve(folder)
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        match = EPOCH_OF_NAME.search(info.base_name)
        if match and int(match.group(1)) > epochs_done:
            fs.delete_file(info.path)
            removed.append(info.path)
    return removed
