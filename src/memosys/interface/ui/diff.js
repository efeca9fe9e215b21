// Word-level diff of two memory versions (longest common subsequence), computed in the
// browser so the viewer needs no diff endpoint. Exposed as window.memosysDiff.
"use strict";
(function () {
  // Above this many DP cells the diff falls back to lines: a 2 M cell table is ~8 MB and
  // a few ms; long documents are compared line by line instead of word by word.
  const MAX_CELLS = 2000000;

  function tokens(text, byLine) {
    return byLine ? text.split(/(\n)/) : text.split(/(\s+)/);
  }

  // Returns [{op: "eq"|"del"|"ins", text}] turning `a` into `b`, adjacent parts merged.
  function diff(a, b) {
    let x = tokens(a, false), y = tokens(b, false);
    if ((x.length + 1) * (y.length + 1) > MAX_CELLS) {
      x = tokens(a, true); y = tokens(b, true);
    }
    // Common prefix/suffix first: typical edits touch a few words of a short text.
    let start = 0;
    while (start < x.length && start < y.length && x[start] === y[start]) start++;
    let endX = x.length, endY = y.length;
    while (endX > start && endY > start && x[endX - 1] === y[endY - 1]) { endX--; endY--; }
    const mx = x.slice(start, endX), my = y.slice(start, endY);
    const parts = [];
    if (start) parts.push({ op: "eq", text: x.slice(0, start).join("") });
    if ((mx.length + 1) * (my.length + 1) > MAX_CELLS) {
      parts.push({ op: "del", text: mx.join("") }, { op: "ins", text: my.join("") });
    } else {
      parts.push(...lcs(mx, my));
    }
    if (endX < x.length) parts.push({ op: "eq", text: x.slice(endX).join("") });
    return merge(parts.filter((p) => p.text !== ""));
  }

  function lcs(x, y) {
    const n = x.length, m = y.length, w = m + 1;
    const table = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        table[i * w + j] = x[i] === y[j] ? table[(i + 1) * w + j + 1] + 1
          : Math.max(table[(i + 1) * w + j], table[i * w + j + 1]);
      }
    }
    const out = [];
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (x[i] === y[j]) { out.push({ op: "eq", text: x[i] }); i++; j++; }
      else if (table[(i + 1) * w + j] >= table[i * w + j + 1]) { out.push({ op: "del", text: x[i++] }); }
      else { out.push({ op: "ins", text: y[j++] }); }
    }
    while (i < n) out.push({ op: "del", text: x[i++] });
    while (j < m) out.push({ op: "ins", text: y[j++] });
    return out;
  }

  function merge(parts) {
    const out = [];
    for (const p of parts) {
      const last = out[out.length - 1];
      if (last && last.op === p.op) last.text += p.text;
      else out.push({ op: p.op, text: p.text });
    }
    return out;
  }

  window.memosysDiff = diff;
})();
