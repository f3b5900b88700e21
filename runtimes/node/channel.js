'use strict';
// The two channels of the runtime, newline-delimited JSON both ways.
//
// * control (LAMBDALET_CONTROL_FD, to B): phase 1 only, read synchronously
//   (nothing else runs while the runtime waits for its function), so that the
//   `go` line is handled the moment it arrives, without a turn of the event
//   loop. The fd stays blocking.
// * worker (LAMBDALET_WORKER_FD, to the supervisor): a net.Socket, read by
//   the event loop; lines split without copying when a line fits in one
//   chunk, joined once (not chunk by chunk) when it does not.

const fs = require('fs');

const NL = 0x0a;

// One line from a blocking fd, without its newline, or null at EOF before
// a newline. Reads in blocks: nothing follows the line on this channel.
function readLineSync(fd) {
  const parts = [];
  for (;;) {
    const buf = Buffer.allocUnsafe(4096);
    let n;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      if (e.code === 'EAGAIN' || e.code === 'EINTR') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
        continue;
      }
      throw e;
    }
    if (n === 0) return null;
    const nl = buf.subarray(0, n).indexOf(NL);
    if (nl !== -1) {
      parts.push(buf.subarray(0, nl));
      return Buffer.concat(parts).toString('utf8');
    }
    parts.push(buf.subarray(0, n));
  }
}

// Splits a byte stream into lines; calls onLine(text) for each complete one.
class LineSplitter {
  constructor(onLine) {
    this.onLine = onLine;
    this.parts = []; // the start of a line whose end has not arrived yet
    this.partsLen = 0;
  }

  push(chunk) {
    let start = 0;
    let nl = chunk.indexOf(NL);
    while (nl !== -1) {
      let line;
      if (this.parts.length !== 0) {
        this.parts.push(chunk.subarray(start, nl));
        line = Buffer.concat(this.parts, this.partsLen + nl - start).toString('utf8');
        this.parts = [];
        this.partsLen = 0;
      } else {
        line = chunk.toString('utf8', start, nl);
      }
      start = nl + 1;
      this.onLine(line);
      nl = chunk.indexOf(NL, start);
    }
    if (start < chunk.length) {
      this.parts.push(start === 0 ? chunk : chunk.subarray(start));
      this.partsLen += chunk.length - start;
    }
  }
}

module.exports = { readLineSync, LineSplitter };
