"""A SavedModel version loaded through TensorFlow's C API, the way TensorFlow Serving loads it.

`TF_LoadSessionFromSavedModel` is the C++ `LoadSavedModel` that TF Serving's loader calls
(import the `serve` MetaGraph, restore the variables, run the init op); `TF_SessionRun` then
feeds and fetches the tensors named in a SignatureDef. Unlike Python's `Session.run`, nothing
checks a fed tensor's shape against its placeholder: a request reaches the graph as TF
Serving would pass it. This is a test and benchmark aid (ctypes over the `libtensorflow_cc`
that the `tensorflow` wheel ships), not a server.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.framework import errors_impl

_TF_STRING = 7
_TSTRING_BYTES = 24  # sizeof(TF_TString) on 64-bit platforms


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


class _Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("length", ctypes.c_size_t),
                ("data_deallocator", ctypes.c_void_p)]


_LIB = None
_LIB_LOCK = threading.Lock()


def library() -> ctypes.CDLL:
    """The `libtensorflow_cc.so.2` of the installed `tensorflow` wheel, with the C API
    functions this module calls declared (the tensor and status functions live in
    `libtensorflow_framework.so.2`, which it links)."""
    global _LIB
    with _LIB_LOCK:
        if _LIB is None:
            path = os.path.join(tf.sysconfig.get_lib(), "libtensorflow_cc.so.2")
            _LIB = _declare(ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))
    return _LIB


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, size, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_int64
    signatures = {
        "TF_NewStatus": ([], p), "TF_DeleteStatus": ([p], None),
        "TF_GetCode": ([p], i), "TF_Message": ([p], ctypes.c_char_p),
        "TF_NewGraph": ([], p), "TF_DeleteGraph": ([p], None),
        "TF_NewSessionOptions": ([], p), "TF_DeleteSessionOptions": ([p], None),
        "TF_SetConfig": ([p, ctypes.c_char_p, size, p], None),
        "TF_NewBuffer": ([], ctypes.POINTER(_Buffer)), "TF_DeleteBuffer": ([p], None),
        "TF_LoadSessionFromSavedModel": ([p, p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p),
                                          i, p, p, p], p),
        "TF_GraphOperationByName": ([p, ctypes.c_char_p], p),
        "TF_SessionRun": ([p, p, ctypes.POINTER(_Output), ctypes.POINTER(p), i,
                           ctypes.POINTER(_Output), ctypes.POINTER(p), i, ctypes.POINTER(p), i,
                           p, p], None),
        "TF_CloseSession": ([p, p], None), "TF_DeleteSession": ([p, p], None),
        "TF_AllocateTensor": ([i, ctypes.POINTER(i64), i, size], p),
        "TF_DeleteTensor": ([p], None), "TF_TensorData": ([p], p),
        "TF_TensorByteSize": ([p], size), "TF_NumDims": ([p], i), "TF_Dim": ([p, i], i64),
        "TF_TensorType": ([p], i),
        "TF_StringInit": ([p], None), "TF_StringCopy": ([p, ctypes.c_char_p, size], None),
        "TF_StringGetDataPointer": ([p], p), "TF_StringGetSize": ([p], size),
        "TF_StringDealloc": ([p], None),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    return lib


class _Status:
    def __init__(self, lib):
        self.lib, self.ptr = lib, lib.TF_NewStatus()

    def check(self) -> None:
        """Raise the `tf.errors.OpError` subclass of a non-OK status."""
        code = self.lib.TF_GetCode(self.ptr)
        if code:
            message = self.lib.TF_Message(self.ptr).decode("utf-8", errors="replace")
            raise errors_impl.exception_type_from_error_code(code)(None, None, message)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.lib.TF_DeleteStatus(self.ptr)


class CApiBundle:
    """One SavedModel version loaded with `TF_LoadSessionFromSavedModel`.

    Args:
      path: the version directory (`<base>/<version>/`).
      tags: the MetaGraph tags (TF Serving loads `serve`).
      config: an optional `tf.compat.v1.ConfigProto` for the session (threads).

    `signature_defs` comes from the MetaGraphDef the loader returns (the internal
    `__saved_model_init_op` left out); `run` feeds numpy arrays by the SignatureDef's tensor
    names, unchecked, and raises `tf.errors.OpError` subclasses for a non-OK status.
    """

    def __init__(self, path: str, tags=("serve",), config: config_pb2.ConfigProto | None = None):
        self.lib = lib = library()
        self.path = os.fspath(path)
        self.graph = lib.TF_NewGraph()
        options = lib.TF_NewSessionOptions()
        meta = lib.TF_NewBuffer()
        c_tags = (ctypes.c_char_p * len(tags))(*[t.encode() for t in tags])
        try:
            with _Status(lib) as status:
                if config is not None:
                    data = config.SerializeToString()
                    lib.TF_SetConfig(options, data, len(data), status.ptr)
                    status.check()
                self.session = lib.TF_LoadSessionFromSavedModel(
                    options, None, self.path.encode(), c_tags, len(tags), self.graph, meta,
                    status.ptr)
                status.check()
            meta_graph = meta_graph_pb2.MetaGraphDef.FromString(
                ctypes.string_at(meta.contents.data, meta.contents.length))
        except BaseException:
            lib.TF_DeleteGraph(self.graph)
            raise
        finally:
            lib.TF_DeleteBuffer(meta)
            lib.TF_DeleteSessionOptions(options)
        self.signature_defs = {name: sig for name, sig in meta_graph.signature_def.items()
                               if not name.startswith("__")}

    def run(self, signature: str, inputs: dict, output_filter=()) -> dict:
        """Feed `inputs` (input name -> array-like; strings as str/bytes objects) to the
        signature's tensors and fetch its outputs -> output name -> numpy array."""
        sig = self.signature_defs[signature]
        wanted = list(output_filter) or list(sig.outputs)
        feeds = [(self._output(sig.inputs[key].name), _to_tensor(self.lib, value))
                 for key, value in inputs.items()]
        fetches = [self._output(sig.outputs[key].name) for key in wanted]
        in_ops = (_Output * len(feeds))(*[f for f, _ in feeds])
        in_values = (ctypes.c_void_p * len(feeds))(*[t for _, t in feeds])
        out_ops = (_Output * len(fetches))(*fetches)
        out_values = (ctypes.c_void_p * len(fetches))()
        try:
            with _Status(self.lib) as status:
                self.lib.TF_SessionRun(self.session, None, in_ops, in_values, len(feeds),
                                       out_ops, out_values, len(fetches), None, 0, None,
                                       status.ptr)
                status.check()
            return {key: _from_tensor(self.lib, out_values[n]) for n, key in enumerate(wanted)}
        finally:
            for _, tensor in feeds:
                _delete_input(self.lib, tensor)
            for tensor in out_values:
                if tensor:
                    self.lib.TF_DeleteTensor(tensor)

    def _output(self, tensor_name: str) -> _Output:
        op_name, _, index = tensor_name.partition(":")
        op = self.lib.TF_GraphOperationByName(self.graph, op_name.encode())
        if not op:
            raise KeyError(f"no operation {op_name!r} in the loaded graph")
        return _Output(op, int(index or 0))

    def close(self) -> None:
        if getattr(self, "session", None):
            with _Status(self.lib) as status:
                self.lib.TF_CloseSession(self.session, status.ptr)
                self.lib.TF_DeleteSession(self.session, status.ptr)
            self.session = None
            self.lib.TF_DeleteGraph(self.graph)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _to_tensor(lib, value) -> int:
    """A numpy array -> a new TF_Tensor* (strings as TF_TStrings), which the caller frees
    with `_delete_input`."""
    array = np.asarray(value)
    dims = (ctypes.c_int64 * array.ndim)(*array.shape)
    if array.dtype.kind in "OSU":
        flat = [v.encode() if isinstance(v, str) else bytes(v) for v in array.ravel()]
        tensor = lib.TF_AllocateTensor(_TF_STRING, dims, array.ndim, _TSTRING_BYTES * len(flat))
        base = lib.TF_TensorData(tensor)
        for n, data in enumerate(flat):
            lib.TF_StringInit(base + n * _TSTRING_BYTES)
            lib.TF_StringCopy(base + n * _TSTRING_BYTES, data, len(data))
        return tensor
    array = np.asarray(array, order="C")  # (ascontiguousarray would make a scalar 1-d)
    dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    tensor = lib.TF_AllocateTensor(dtype, dims, array.ndim, array.nbytes)
    if array.nbytes:
        ctypes.memmove(lib.TF_TensorData(tensor), array.ctypes.data, array.nbytes)
    return tensor


def _delete_input(lib, tensor) -> None:
    """Free a tensor made by `_to_tensor` (its strings' heap buffers first: the raw buffer
    TF_AllocateTensor made does not destroy them)."""
    if lib.TF_TensorType(tensor) == _TF_STRING:
        base = lib.TF_TensorData(tensor)
        for n in range(lib.TF_TensorByteSize(tensor) // _TSTRING_BYTES):
            lib.TF_StringDealloc(base + n * _TSTRING_BYTES)
    lib.TF_DeleteTensor(tensor)


def _from_tensor(lib, tensor) -> np.ndarray:
    """A TF_Tensor* the session returned -> numpy array (strings as bytes objects)."""
    shape = tuple(lib.TF_Dim(tensor, d) for d in range(lib.TF_NumDims(tensor)))
    dtype = lib.TF_TensorType(tensor)
    base = lib.TF_TensorData(tensor)
    if dtype == _TF_STRING:
        count = int(np.prod(shape, dtype=np.int64))
        flat = np.empty(count, dtype=object)
        for n in range(count):
            item = base + n * _TSTRING_BYTES
            flat[n] = ctypes.string_at(lib.TF_StringGetDataPointer(item),
                                       lib.TF_StringGetSize(item))
        return flat.reshape(shape)
    np_dtype = tf.dtypes.as_dtype(dtype).as_numpy_dtype
    size = lib.TF_TensorByteSize(tensor)
    data = ctypes.string_at(base, size) if size else b""
    return np.frombuffer(data, dtype=np_dtype).reshape(shape).copy()
