"""{{name}}: a telemetry-host connector in Python that writes one CSV line per row to
/data/{{name}}.csv (the plugin's granted data directory).

Build with ./build.sh, try it with
    telemetry-host plugin test . --input samples.ndjson
and run it by putting this folder in the host's plugin directory.
"""

import json
import math

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import history, log, types

OUTPUT = "/data/{{name}}.csv"
# Rows read from the history at once when the file has to be filled in.
READ_ROWS = 65536


class Writer:
    """The connector's state between calls."""

    def __init__(self, context):
        config = json.loads(context.config_json)
        wanted = config.get("series", list(context.series))
        unknown = [name for name in wanted if name not in context.series]
        if unknown:
            # The host disables the plugin with this message, naming what to fix.
            raise Err(types.ConnectorError_InvalidConfig(
                f"config.series: no series {', '.join(unknown)}; the host has {', '.join(context.series)}"))
        self.columns = [list(context.series).index(name) for name in wanted]
        self.file = resume(OUTPUT, ["row", "timestamp_ms", *wanted], context.next_row, wanted)

    def write(self, batch):
        lines = [
            line(batch.first_row + index, timestamp, (batch.columns[column][index] for column in self.columns))
            for index, timestamp in enumerate(batch.timestamps_ms)
        ]
        if lines:
            try:
                self.file.write("".join(lines))
                self.file.flush()
            except OSError as error:
                # The host offers the same rows again after a backoff.
                raise Err(types.ConnectorError_Unavailable(f"{OUTPUT}: {error}"))


# componentize-py makes a new TelemetryConnector for every call: state lives here.
writer = None


class TelemetryConnector(exports.TelemetryConnector):
    def start(self, context):
        global writer
        writer = Writer(context)
        log.write(log.Level.INFO, f"writing {OUTPUT} from row {context.next_row}")

    def update(self, batch):
        writer.write(batch)

    def stop(self):
        writer.file.close()


def line(row, timestamp, values):
    # NaN is "no value in this row": an empty field. Python's repr is the shortest
    # text that reads back as the same float.
    return ",".join([str(row), str(timestamp), *("" if math.isnan(value) else repr(value) for value in values)]) + "\n"


def resume(path, header, next_row, series):
    """The file open for appending, holding exactly the rows before `next_row`.

    The host delivers from `next_row` on, so whatever an earlier instance wrote past it
    (it crashed before its cursor moved) is cut, and rows the file lacks (it was deleted)
    are filled in from the host's history: every row is in the file once, in order.
    """
    try:
        file = open(path, "r+", newline="")
    except FileNotFoundError:
        file = open(path, "w+", newline="")
    kept_rows, end = 0, 0
    if file.readline():
        end = file.tell()
        while kept_rows < next_row and file.readline().endswith("\n"):
            kept_rows += 1
            end = file.tell()
    file.seek(end)
    file.truncate()
    if end == 0:
        file.write(",".join(header) + "\n")
    first = kept_rows
    while first < next_row:
        rows = history.RowRange(first=first, count=min(READ_ROWS, next_row - first))
        timestamps = history.read_timestamps(rows)
        columns = [history.read_series(name, rows) for name in series]
        file.write("".join(line(first + index, timestamp, (column[index] for column in columns))
                           for index, timestamp in enumerate(timestamps)))
        first += len(timestamps)
        if not timestamps:
            break
    file.flush()
    return file
