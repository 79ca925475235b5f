"""Input checks of the served graph, run before anything else in every signature.

An input whose rank or fixed dimensions differ from its signature's (TF Serving's C++ session
feeds tensors unchecked), a request over a `ServingLimits` limit, inputs whose row counts
differ, an empty session id, a `state` outside [-1, 1] (or not finite) or a click position out
of range is refused with INVALID_ARGUMENT and a message naming the input and the limit or
expected shape, before any state changes.
"""

from __future__ import annotations

import tensorflow as tf

from tf_gru4rec.serving.graph.limits import MAX_CLICK_POSITION, ServingLimits


def checked_inputs(limits: ServingLimits, session_ids=(), sessions=(), **inputs) -> list:
    """Validate a request's inputs before anything else runs; returns them in order.

    Every input must have the rank and fixed dimensions of its signature (TensorFlow
    Serving's C++ session feeds tensors unchecked); then `inputs` (name -> tensor, in the
    order the signature lists them) must all have the same number of rows, at most
    `max_request_rows`; `session_ids` names those holding session ids (1 to `max_id_bytes`
    bytes each) and `sessions` those of shape [B, T] (T at most `max_session_length`).
    Float inputs (`state`) must be finite and within [-1, 1], where a GRU state lies.
    """
    names = list(inputs)
    with tf.control_dependencies([shape_check(name, tensor, name in sessions)
                                  for name, tensor in inputs.items()]):
        rows = {name: tf.shape(tensor, out_type=tf.int64)[0]
                for name, tensor in inputs.items()}
    first = names[0]
    checks = [require(rows[first] <= limits.max_request_rows,
                      f"`{first}` has {{}} rows; this export accepts at most "
                      f"{limits.max_request_rows} rows per request (export option "
                      f"max_request_rows)", rows[first])]
    for name in names[1:]:
        checks.append(require(tf.equal(rows[name], rows[first]),
                              f"`{name}` has {{}} rows but `{first}` has {{}}: every input "
                              f"should have one row per session", rows[name], rows[first]))
    with tf.control_dependencies(checks):  # row counts first: they are the cheap checks
        for name in session_ids:
            lengths = tf.concat([tf.strings.length(inputs[name]), [1]], axis=0)
            checks.append(require(tf.reduce_min(lengths) >= 1,
                                  f"a `{name}` is empty; session ids should be non-empty "
                                  f"strings"))
            checks.append(require(tf.reduce_max(lengths) <= limits.max_id_bytes,
                                  f"a `{name}` is {{}} bytes long; this export accepts at "
                                  f"most {limits.max_id_bytes} bytes (export option "
                                  f"max_id_bytes)", tf.reduce_max(lengths)))
        for name in sessions:
            length = tf.shape(inputs[name], out_type=tf.int64)[1]
            checks.append(require(length <= limits.max_session_length,
                                  f"`{name}` has {{}} items per row; this export accepts "
                                  f"at most {limits.max_session_length} (export option "
                                  f"max_session_length)", length))
        for name, tensor in inputs.items():
            if tensor.dtype.is_floating:
                largest = tf.reduce_max(tf.concat([tf.reshape(tf.abs(tensor), [-1]), [0.0]],
                                                  axis=0))
                # NaN fails the comparison too (and reduce_max passes it on).
                checks.append(require(tf.reduce_all(tf.abs(tensor) <= 1.0),
                                      f"`{name}` should hold finite numbers within [-1, 1] "
                                      f"(a GRU state); its largest magnitude is {{}}",
                                      largest))
    with tf.control_dependencies(checks):
        return [tf.identity(tensor) for tensor in inputs.values()]


def checked_positions(position):
    """`click`'s positions int64 [B], once all are within [0, MAX_CLICK_POSITION]."""
    padded = tf.concat([position, tf.zeros([1], tf.int64)], axis=0)
    worst = tf.where(tf.reduce_any(position < 0), tf.reduce_min(padded),
                     tf.reduce_max(padded))
    checked = require(
        (worst >= 0) & (worst <= MAX_CLICK_POSITION),
        f"`position` should be the click's 0-based index in its session: non-negative "
        f"and at most {MAX_CLICK_POSITION}; received {{}}", worst)
    with tf.control_dependencies([checked]):
        return tf.identity(position)


def shape_check(name: str, tensor, sessions: bool):
    """An assertion that `tensor` has the rank and fixed dimensions of its signature (its
    static shape), with a message naming it, its expected shape ([B], [B, T], [B, 22]) and
    the shape received."""
    expected = tensor.shape.as_list()
    labels = ", ".join("B" if i == 0 else ("T" if sessions else "?") if d is None else str(d)
                       for i, d in enumerate(expected))
    shape = tf.shape(tensor, out_type=tf.int64)
    # The rank is read from the shape's values padded with -1, not from its size: the static
    # shape makes Grappler fold tf.size(tf.shape(x)) or tf.rank(x) into a constant, so such a
    # check would pass whatever is fed.
    rank = len(expected)
    padded = tf.concat([shape, tf.fill([rank + 1], tf.constant(-1, tf.int64))], axis=0)
    wanted = tf.constant([-2 if d is None else d for d in expected] + [-1], tf.int64)
    got = padded[:rank + 1]
    ok = tf.reduce_all(tf.where(wanted == -2, got >= 0, tf.equal(got, wanted)))
    return require(ok, f"`{name}` should have shape [{labels}]; received shape {{}}", shape)


def require(condition, template: str, *values):
    """An assertion that fails with InvalidArgument and `template` formatted with `values`
    (each `{}` in the template takes one value)."""
    message = tf.strings.format(template, values) if values else template
    return tf.debugging.Assert(condition, [message], name="check")
