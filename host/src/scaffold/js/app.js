// {{name}}: a telemetry-host connector in JavaScript that writes one CSV line per row to
// /data/{{name}}.csv (the plugin's granted data directory).
//
// Build with ./build.sh, try it with
//     telemetry-host plugin test . --input samples.ndjson
// and run it by putting this folder in the host's plugin directory.
//
// 64-bit numbers of the WIT (rows, timestamps) are BigInts; values are Float64Arrays with
// NaN for "no value".

import { getDirectories } from 'wasi:filesystem/preopens@0.2.12';
import { readSeries, readTimestamps } from 'telemetry:connector/history@0.1.0';
import { write as log } from 'telemetry:connector/log@0.1.0';

const FILE = '{{name}}.csv';
// Rows read from the history at once when the file has to be filled in.
const READ_ROWS = 65536n;
const NEWLINE = 10;

// The WIT's error cases are thrown as { tag, val } (a thrown Error traps instead).
const unavailable = (error) => ({ tag: 'unavailable', val: `/data/${FILE}: ${error?.payload ?? error}` });

let writer = null;

export const telemetryConnector = {
  start(context) {
    const config = JSON.parse(context.configJson);
    const wanted = config.series ?? context.series;
    const unknown = wanted.filter((name) => !context.series.includes(name));
    if (unknown.length > 0) {
      // The host disables the plugin with this message, naming what to fix.
      throw { tag: 'invalid-config', val: `config.series: no series ${unknown.join(', ')}; the host has ${context.series.join(', ')}` };
    }
    try {
      writer = new Writer(wanted, wanted.map((name) => context.series.indexOf(name)), context.nextRow);
    } catch (error) {
      throw unavailable(error);
    }
    log('info', `writing /data/${FILE} from row ${context.nextRow}`);
  },

  update(rows) {
    try {
      writer.write(lines(rows.firstRow, rows.timestampsMs, writer.columns.map((column) => rows.columns[column])));
    } catch (error) {
      // The host offers the same rows again after a backoff.
      throw unavailable(error);
    }
  },

  stop() {},
};

function lines(firstRow, timestamps, columns) {
  let text = '';
  for (let index = 0; index < timestamps.length; index++) {
    // NaN is "no value in this row": an empty field. String() is the shortest text that
    // reads back as the same number.
    const values = columns.map((column) => (Number.isNaN(column[index]) ? '' : String(column[index])));
    text += [firstRow + BigInt(index), timestamps[index], ...values].join(',') + '\n';
  }
  return text;
}

// The file holding exactly the rows before `nextRow`. The host delivers from `nextRow` on,
// so whatever an earlier instance wrote past it (it crashed before its cursor moved) is
// cut, and rows the file lacks (it was deleted) are filled in from the host's history:
// every row is in the file once, in order.
class Writer {
  constructor(series, columns, nextRow) {
    const [data] = getDirectories().find(([, path]) => path === '/data');
    this.columns = columns;
    this.file = data.openAt({}, FILE, { create: true }, { read: true, write: true });
    const bytes = this.readAll();
    let end = bytes.indexOf(NEWLINE) + 1; // after the header; 0 without one
    let kept = 0n;
    while (end > 0 && kept < nextRow) {
      const next = bytes.indexOf(NEWLINE, end);
      if (next < 0) break;
      end = next + 1;
      kept += 1n;
    }
    this.file.setSize(BigInt(end));
    this.offset = BigInt(end);
    if (end === 0) this.write(['row', 'timestamp_ms', ...series].join(',') + '\n');
    for (let first = kept; first < nextRow; ) {
      const count = nextRow - first < READ_ROWS ? nextRow - first : READ_ROWS;
      const timestamps = readTimestamps({ first, count });
      if (timestamps.length === 0) break;
      this.write(lines(first, timestamps, series.map((name) => readSeries(name, { first, count }))));
      first += BigInt(timestamps.length);
    }
  }

  readAll() {
    const chunks = [];
    for (let offset = 0n; ; ) {
      const [chunk, end] = this.file.read(1n << 16n, offset);
      chunks.push(chunk);
      offset += BigInt(chunk.length);
      if (end || chunk.length === 0) break;
    }
    const bytes = new Uint8Array(chunks.reduce((length, chunk) => length + chunk.length, 0));
    chunks.reduce((at, chunk) => (bytes.set(chunk, at), at + chunk.length), 0);
    return bytes;
  }

  write(text) {
    let bytes = new TextEncoder().encode(text);
    while (bytes.length > 0) {
      const written = this.file.write(bytes, this.offset);
      this.offset += written;
      bytes = bytes.subarray(Number(written));
    }
  }
}
