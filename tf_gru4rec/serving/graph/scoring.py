"""Scoring every item in the served graph: the item table in row blocks, top-K and ranks.

Scoring all items reads the whole item table, which sets the floor of a click's latency. The
table is stored in `score_shards` row blocks (one variable each) scored in parallel, with a
top-K per block merged into the same items and ties as one top-K; `score_precision` chooses a
float32 (exact), bfloat16 or int8 (per-row scale) copy for scoring (BENCHMARKS.md measures
both their speed and their accuracy). Requests are scored `chunk_rows` rows at a time, one
chunk after another (`by_chunks`), so that their score matrices have a fixed memory bound.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SCORE_PRECISIONS = ("float32", "bfloat16", "int8")


class ItemScorer(tf.Module):
    """Scores of every item, `h . w + b`, for GRU outputs h, and their top K or ranks.

    Args:
      item_weights: float32 [n_items, H], the model's output item table.
      item_bias: float32 [n_items], its item biases.
      k: number of top items.
      precision: the copy of the table that scores all items: "float32" (exact, the model's
        own), "bfloat16" (a bfloat16 copy; products rounded to bfloat16) or "int8" (int8 rows
        with a float scale per row, the GRU output quantised per row; int32 products).
      shards: the table is scored in this many row blocks, in parallel (fewer when a block
        would hold fewer than max(k, 16) items); results do not depend on it.
      chunk_rows: request rows scored at once.
      max_request_rows: most rows of a request (one chunk when `chunk_rows` covers them).
    """

    def __init__(self, item_weights: np.ndarray, item_bias: np.ndarray, k: int,
                 precision: str, shards: int, chunk_rows: int, max_request_rows: int):
        super().__init__(name="item_scorer")
        if precision not in SCORE_PRECISIONS:
            raise ValueError(f"`score_precision` should be one of {SCORE_PRECISIONS}. "
                             f"Received: {precision!r}")
        self.k = int(k)
        self.chunk_rows = int(chunk_rows)
        self.max_request_rows = int(max_request_rows)
        self.precision = precision
        self.bounds = shard_bounds(len(item_weights), self.k, shards)
        # One variable per block and precision: float32 blocks (scoring at float32, and the
        # tied input embedding of the constrained mode) and the reduced-precision blocks of
        # `precision`. Only the blocks a signature reads are saved.
        self.table_blocks, self.bias_blocks, self.score_blocks, self.scale_blocks = [], [], [], []
        for i, (start, stop) in enumerate(zip(self.bounds[:-1], self.bounds[1:], strict=True)):
            block = item_weights[start:stop]
            self.table_blocks.append(tf.Variable(block, trainable=False, name=f"items_{i}"))
            self.bias_blocks.append(tf.Variable(item_bias[start:stop], trainable=False,
                                                name=f"item_bias_{i}"))
            if precision == "bfloat16":
                self.score_blocks.append(tf.Variable(tf.cast(block, tf.bfloat16),
                                                     trainable=False, name=f"items_bf16_{i}"))
            elif precision == "int8":
                table, scale = quantize_rows(block)
                self.score_blocks.append(tf.Variable(table, trainable=False,
                                                     name=f"items_int8_{i}"))
                self.scale_blocks.append(tf.Variable(scale, trainable=False,
                                                     name=f"items_scale_{i}"))
            else:
                self.score_blocks.append(self.table_blocks[-1])

    def item_rows(self, item_idx):
        """Rows of the float32 item table for indices [M] (all valid): [M, H]."""
        rows = None
        for start, stop, block in zip(self.bounds[:-1], self.bounds[1:], self.table_blocks,
                                      strict=True):
            inside = (item_idx >= start) & (item_idx < stop)
            # Gather from the read value: a gather on the variable itself (ResourceGather)
            # would switch it to copy-on-read, and every scoring read would copy the block.
            taken = tf.gather(block.value(),
                              tf.clip_by_value(item_idx - start, 0, stop - start - 1))
            rows = taken if rows is None else tf.where(inside[:, None], taken, rows)
        return rows

    def top_k(self, hidden, seen=None):
        """hidden [B, H], seen int64 [B, T] (-1 = none) or None -> (indices int64 [B, K],
        scores float32 [B, K]), the seen items left out; scored `chunk_rows` rows at a time."""
        specs = [(tf.int64, [None, self.k]), (tf.float32, [None, self.k])]
        if seen is None:
            return self._by_chunks(lambda h: self._top_k_rows(h), [hidden], specs)
        return self._by_chunks(self._top_k_rows, [hidden, seen], specs)

    def rank(self, hidden, target):
        """Where targets rank: hidden [B, H], target int64 [B] (>= 0) -> (n_higher int32 [B]:
        items scoring strictly higher, n_ties int32 [B]: other items scoring the same)."""
        return self._by_chunks(self._rank_rows, [hidden, target],
                               [(tf.int32, [None]), (tf.int32, [None])])

    def _shard_scores(self, hidden):
        """Scores of every item for GRU outputs hidden [B, H], as one [B, rows] block per
        row block of the item table: independent products that run in parallel (a batch-1
        product alone uses one core)."""
        if self.precision == "int8":
            hidden_q, hidden_scale = quantize_rows(hidden)
        blocks = []
        for i, table in enumerate(self.score_blocks):
            if self.precision == "float32":
                products = tf.matmul(hidden, table, transpose_b=True)
            elif self.precision == "bfloat16":
                products = tf.cast(tf.matmul(tf.cast(hidden, tf.bfloat16), table,
                                             transpose_b=True), tf.float32)
            else:
                products = tf.raw_ops.BatchMatMulV3(x=hidden_q[None], y=table[None],
                                                    Tout=tf.int32, adj_y=True)[0]
                products = (tf.cast(products, tf.float32) * hidden_scale[:, None]
                            * self.scale_blocks[i][None, :])
            blocks.append(products + self.bias_blocks[i])  # (B, rows of block i)
        return blocks

    def _score_all(self, hidden):
        """Scores of every item [B, n_items] for GRU outputs hidden [B, H]."""
        blocks = self._shard_scores(hidden)
        return blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=1)

    def _top_k_rows(self, hidden, seen=None):
        """The top K of one chunk: hidden [C, H], seen int64 [C, T] or None ->
        (indices int64 [C, K], scores float32 [C, K])."""
        if seen is None and len(self.bounds) > 2:
            # Top-K of each shard, then of their candidates: the same items and ties as one
            # top-K (candidates are in item order, top_k prefers the lower index on ties).
            values, indices = [], []
            for start, block in zip(self.bounds[:-1], self._shard_scores(hidden), strict=True):
                top = tf.math.top_k(block, k=self.k)
                values.append(top.values)
                indices.append(tf.cast(top.indices, tf.int64) + start)
            values, picked = tf.math.top_k(tf.concat(values, axis=1), k=self.k)  # (C, K)
            return tf.gather(tf.concat(indices, axis=1), picked, batch_dims=1), values
        scores = self._score_all(hidden)  # (C, n_items)
        if seen is not None:
            batch_rows = tf.broadcast_to(
                tf.range(tf.shape(seen, out_type=tf.int64)[0])[:, None],
                tf.shape(seen, out_type=tf.int64))
            mask = seen >= 0
            indices = tf.stack([tf.boolean_mask(batch_rows, mask),
                                tf.boolean_mask(seen, mask)], axis=1)
            scores = tf.tensor_scatter_nd_update(
                scores, indices,
                tf.fill([tf.shape(indices)[0]], tf.constant(-np.inf, tf.float32)))
        values, indices = tf.math.top_k(scores, k=self.k)  # (C, K)
        return tf.cast(indices, tf.int64), values

    def _rank_rows(self, hidden, target):
        """`rank` of one chunk: hidden [C, H], target int64 [C] -> int32 [C], int32 [C]."""
        scores = self._score_all(hidden)  # (C, n_items)
        target_scores = tf.gather(scores, target, axis=1, batch_dims=1)
        n_higher = tf.reduce_sum(tf.cast(scores > target_scores[:, None], tf.int32), axis=1)
        n_ties = tf.reduce_sum(tf.cast(scores == target_scores[:, None], tf.int32), axis=1) - 1
        return n_higher, n_ties

    def _by_chunks(self, fn, tensors, out_specs):
        """fn applied to row chunks of `tensors` (each [B, ...]), `chunk_rows` rows at a time
        and one chunk after another, so that a request's score matrices never exceed
        `scoring_memory_bytes`; the outputs ((dtype, shape) in `out_specs`, each [C, ...])
        are concatenated back to [B, ...]."""
        if self.chunk_rows >= self.max_request_rows:  # every request is one chunk
            return fn(*tensors)
        rows = tf.shape(tensors[0])[0]
        size = self.chunk_rows
        n_chunks = (rows + size - 1) // size

        def body(i, *arrays):
            start = i * size
            take = tf.minimum(size, rows - start)
            outs = fn(*[t[start:start + take] for t in tensors])
            return (i + 1, *(a.write(i, o) for a, o in zip(arrays, outs, strict=True)))

        arrays = [tf.TensorArray(dtype, size=n_chunks, infer_shape=False, element_shape=shape)
                  for dtype, shape in out_specs]
        _, *arrays = tf.while_loop(lambda i, *_: i < n_chunks, body, (tf.constant(0), *arrays),
                                   parallel_iterations=1)
        return [a.concat() for a in arrays]


def shard_bounds(n_items: int, k: int, shards: int) -> list[int]:
    """Row boundaries [0, ..., n_items] of at most `shards` blocks of at least max(k, 16) rows,
    each starting at a multiple of 16 rows (a 64-byte boundary for any row width)."""
    if isinstance(shards, bool) or int(shards) != shards or shards < 1:
        raise ValueError(f"`score_shards` should be a positive integer. Received: {shards!r}")
    shards = max(1, min(int(shards), n_items // max(k, 16)))
    step = -(-n_items // shards)
    step = -(-step // 16) * 16
    bounds = list(range(0, n_items, step)) + [n_items]
    while len(bounds) > 2 and bounds[-1] - bounds[-2] < k:  # every block holds k items
        del bounds[-2]
    return bounds


def quantize_rows(matrix):
    """Symmetric int8 quantisation per row: matrix [R, C] (NumPy or tensor) -> (int8 [R, C],
    float32 scale [R]) with matrix ~= int8 * scale[:, None]; an all-zero row gets scale 1."""
    if isinstance(matrix, np.ndarray):
        scale = np.abs(matrix).max(axis=1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return np.clip(np.round(matrix / scale[:, None]), -127, 127).astype(np.int8), scale
    scale = tf.reduce_max(tf.abs(matrix), axis=1) / 127.0
    scale = tf.where(scale > 0, scale, 1.0)
    quantized = tf.clip_by_value(tf.round(matrix / scale[:, None]), -127.0, 127.0)
    return tf.cast(quantized, tf.int8), scale
