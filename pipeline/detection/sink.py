"""The datasink of bulk detection: whole part files, one per shard in each write task.

Each write task's rows are split by input shard and written as complete files named after
the shard (predictions.part_name), after the shard's panoptic PNGs (a model with stuff classes),
so that a part file present means its PNGs are too. What every task wrote (rows, files, errors by kind,
model calls) comes back to the driver as its write result: the job's summary is built from
those, never by reading the rows back.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from .. import predictions
from ..panoptic import write_pngs


class PartSink(Datasink):
    def __init__(self, output: str, run: dict[str, Any], rows_per_file: int):
        self.output, self.run, self.rows_per_file = output, run, rows_per_file
        self.totals: dict[str, Any] = {"rows": 0, "files": 0, "calls": 0.0, "detected": 0, "errors": Counter()}

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable, ctx) -> dict[str, Any]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        result: dict[str, Any] = {"rows": 0, "files": 0, "calls": 0.0, "detected": 0, "errors": {}}
        if not tables:
            return result
        table = pa.concat_tables(tables)
        for shard in pc.unique(table["shard"]).to_pylist():
            rows = table.filter(pc.equal(table["shard"], shard))
            if "panoptic_png" in rows.column_names:
                write_pngs(self.output, rows["path"].to_pylist(), rows["panoptic_png"].to_pylist())
            predictions.write_part(self.output, shard, rows.select(predictions.SCHEMA.names), self.run)
            result["files"] += 1
        result["rows"] = table.num_rows
        result["calls"] = float(pc.sum(table["call_share"]).as_py() or 0.0)
        result["detected"] = table["error"].null_count  # rows that reached the model
        result["errors"] = predictions.error_kinds(table["error"])
        return result

    def on_write_complete(self, write_result: WriteResult) -> None:
        for result in write_result.write_returns:
            for key in ("rows", "files", "calls", "detected"):
                self.totals[key] += result[key]
            self.totals["errors"].update(result["errors"])
