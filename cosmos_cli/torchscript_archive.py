"""The parameters and buffers of a TorchScript archive (``torch.jit.save``), read without running anything from it.

TorchScript's ``jit.load`` is not a safe way to read a file someone else wrote: it compiles the archive's
TorchScript code and runs each class's ``__setstate__``, and TorchScript can write files (``aten::save``). This
module reads the same archive as data:

- The archive is a zip file (entries stored, not compressed) with one top folder ``<root>/``. ``<root>/data.pkl``
  pickles the module tree: every module is ``__torch__.<path> <Class>`` built with ``NEWOBJ`` and given its
  attributes with ``BUILD`` (a dict, in attribute-slot order); tensors are ``torch._utils._rebuild_tensor_v2``
  calls whose storage is a persistent id ``('storage', torch.<Type>Storage, key, location, numel)`` naming the
  entry ``<root>/data/<key>`` (``constants.pkl`` does the same for ``<root>/constants/``; constants are not part
  of a state dict). ``<root>/code/<path>.py`` declares each class, with ``__parameters__ = [...]`` and
  ``__buffers__ = [...]`` telling which tensor attributes are parameters and buffers.
  (PyTorch's writer: pytorch/pytorch torch/csrc/jit/serialization/export_module.cpp at commit 00203e80783a,
  ``ScriptModuleSerializer::serialize``/``writeArchive``: ``data.pkl`` with its tensors under ``data/<n>``, the
  code's tensor constants in ``constants.pkl`` and ``constants/``, one ``code/`` file per class qualifier. Its
  reader, import.cpp, is what this module replaces.)
- Our unpickler (:class:`_Unpickler`) resolves no global: the tensor rebuild functions and storage types map to
  inert records, ``collections.OrderedDict`` to ``dict``, and every other global (the ``__torch__`` classes,
  anything a hostile file names) to a class of this module that only records its arguments and its
  ``__setstate__`` state. Nothing is imported and nothing from the file is called. The class declarations are
  read with :func:`ast.parse` (parsed, never compiled or run).
- :func:`read_state_dict` walks the module tree and returns the state dict that TorchScript's
  ``jit.load(path).state_dict()`` gives: the dotted names (a module's parameters, then its buffers, then its
  children, each in slot order), dtypes, shapes, strides and storage sharing. A module whose class declares a
  ``__setstate__`` (or whose state is not an attribute dict) is refused: only running its code could say what its
  tensors are. Globals outside ``__torch__`` are inert data, never modules.
- The storages are memory-mapped copy-on-write (``mmap.ACCESS_COPY``), not read: a tensor costs nothing until
  its pages are touched, and writing to it never changes the file. Every storage is checked against its zip
  entry's size and every tensor against its storage's bounds.

Torch is imported inside the functions only (this module is imported by ``cosmos --help`` paths).
"""

from __future__ import annotations

import ast
import io
import mmap
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError

MAX_PICKLE_BYTES = 64 << 20  # data.pkl holds the module tree only (a few hundred KB for the 720p tokenizer)
MAX_CODE_BYTES = 16 << 20
MAX_DEPTH = 256  # module nesting
_HINT = "Replace it with the released file (`cosmos download --model <name>`); cosmos never runs code from a .jit file."
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header: signature ... name length, extra length

# torch.<Name>Storage -> torch dtype attribute name
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


class _Malformed(ValueError):
    """The archive is not what torch.jit.save writes (becomes a CheckpointError naming the file)."""


class _Refused(_Malformed):
    """A well-formed archive whose tensors only its code could produce."""


# ---------------------------------------------------------------------------------------- inert records


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class StorageRef:
    """A persistent id of data.pkl: storage ``key`` (the entry ``<root>/data/<key>``) of ``numel`` elements."""

    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A ``_rebuild_tensor_v2`` call, recorded: a strided view of ``storage``."""

    storage: StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class InertObject:
    """An object of a class the file names (a ``__torch__`` module, or anything else): its constructor arguments
    and its ``__setstate__`` state, kept as data. Subclassed once per (module, name) so that pickle's ``NEWOBJ``
    (which needs a type) works; the subclass carries only the two strings."""

    module: str = ""
    name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.module}.{self.name}>"


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise _Malformed(f"{what} is not an integer: {type(value).__name__}")
    return value


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple):
        raise _Malformed(f"{what} is not a tuple: {type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> TensorRef:
    """Stands in for ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
    metadata])`` and ``_rebuild_tensor``: records the view, builds nothing."""
    if not isinstance(storage, StorageRef):
        raise _Malformed(f"a tensor's storage is {type(storage).__name__}, not a storage id")
    ref = TensorRef(storage, _int(offset, "storage offset"), _ints(size, "tensor size"), _ints(stride, "tensor stride"))
    if len(ref.size) != len(ref.stride) or min((*ref.size, *ref.stride, ref.offset), default=0) < 0:
        raise _Malformed(f"tensor view size {ref.size} stride {ref.stride} offset {ref.offset} is not valid")
    if all(ref.size):  # non-empty: the last element it reaches must lie in the storage
        last = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride, strict=True))
        if last >= storage.numel:
            raise _Malformed(f"a tensor reaches element {last} of a storage of {storage.numel}")
    return ref


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """Stands in for ``torch._utils._rebuild_parameter(data, requires_grad, hooks)``: the data."""
    if not isinstance(data, TensorRef):
        raise _Malformed(f"a parameter holds {type(data).__name__}, not a tensor")
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): dict,
}


class _Unpickler(pickle.Unpickler):
    """Resolves no global: see the module docstring."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self._inert: dict[tuple[str, str], type] = {}
        self._storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        key = (str(module), str(name))
        if key not in self._inert:
            self._inert[key] = type("InertGlobal", (InertObject,), {"module": key[0], "name": key[1]})
        return self._inert[key]

    def persistent_load(self, pid: Any) -> StorageRef:
        if isinstance(pid, tuple) and len(pid) > 1 and isinstance(pid[1], type) and issubclass(pid[1], InertObject):
            raise _Malformed(f"storage type {pid[1].module}.{pid[1].name} is not one we read")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str)):
            raise _Malformed(f"unknown persistent id {str(pid)[:80]}")
        key, numel = pid[2], _int(pid[4], "storage size")
        ref = StorageRef(key, pid[1].dtype, numel)
        if self._storages.setdefault(key, ref) != ref:
            raise _Malformed(f"storage {key} is named with two types or sizes")
        return self._storages[key]


# ------------------------------------------------------------------------------------ class declarations


@dataclass
class ClassDecl:
    """What a class's declaration in ``code/`` says (read with ast, not run)."""

    is_module: bool
    parameters: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()
    has_setstate: bool = False


@dataclass
class _Archive:
    path: Path
    zf: zipfile.ZipFile
    root: str
    _parsed: dict[str, dict[str, ClassDecl]] = field(default_factory=dict)

    def read(self, name: str, limit: int) -> bytes:
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise _Malformed(f"it has no entry {name}") from None
        if info.file_size > limit:
            raise _Malformed(f"{name} is {info.file_size} bytes, more than the {limit} allowed")
        return self.zf.read(info)

    def declaration(self, module: str, name: str) -> ClassDecl:
        if module not in self._parsed:
            self._parsed[module] = self._parse(module)
        decl = self._parsed[module].get(name)
        if decl is None:
            raise _Malformed(f"class {module}.{name} is not declared in its code/ file")
        return decl

    def _parse(self, module: str) -> dict[str, ClassDecl]:
        parts = module.split(".")
        if not all(p.isidentifier() for p in parts):
            raise _Malformed(f"class path {module!r} is not a dotted name")
        source = self.read(f"{self.root}/code/{'/'.join(parts)}.py", MAX_CODE_BYTES)
        try:
            tree = ast.parse(source.decode("utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError, MemoryError) as e:
            raise _Malformed(f"the code of {module} does not parse ({e})") from e
        return {node.name: _declaration(node) for node in tree.body if isinstance(node, ast.ClassDef)}


def _declaration(node: ast.ClassDef) -> ClassDecl:
    lists: dict[str, tuple[str, ...]] = {}
    setstate = False
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            target = stmt.targets[0].id
            if target in ("__parameters__", "__buffers__"):
                try:
                    value = ast.literal_eval(stmt.value)
                except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as e:
                    raise _Malformed(f"{node.name}.{target} is not a literal list") from e
                if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise _Malformed(f"{node.name}.{target} is not a list of names")
                lists[target] = tuple(value)
        elif isinstance(stmt, ast.FunctionDef) and stmt.name == "__setstate__":
            setstate = True
    is_module = any(isinstance(b, ast.Name) and b.id == "Module" for b in node.bases)
    return ClassDecl(is_module, lists.get("__parameters__", ()), lists.get("__buffers__", ()), setstate)


# --------------------------------------------------------------------------------------------- reading


def _open(path: Path) -> _Archive:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _Malformed(f"not a zip archive ({e})") from e
    roots = {n.split("/")[0] for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")}
    if len(roots) != 1:
        zf.close()
        raise _Malformed("no single <root>/data.pkl entry: not a TorchScript archive")
    archive = _Archive(Path(path), zf, roots.pop())
    if f"{archive.root}/byteorder" in zf.namelist():
        order = archive.read(f"{archive.root}/byteorder", 16).decode("ascii", "replace").strip()
        if order != "little":
            raise _Malformed(f"its tensors are stored {order}-endian; only little-endian archives are read")
    return archive


def read_module_tree(path: Path | str) -> Any:
    """The unpickled ``data.pkl`` of the archive at ``path``: :class:`InertObject` modules whose ``state`` is
    their attribute dict, tensors as :class:`TensorRef`. Raises :class:`CheckpointError` if it is not a
    TorchScript archive."""
    path = Path(path)
    try:
        archive = _open(path)
        with archive.zf:
            return _unpickle(archive)
    except _Malformed as e:
        raise CheckpointError(f"{path}: not a TorchScript archive we can read: {e}", hint=_HINT) from e


def _unpickle(archive: _Archive) -> Any:
    data = archive.read(f"{archive.root}/data.pkl", MAX_PICKLE_BYTES)
    try:
        return _Unpickler(data).load()
    except _Malformed:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError, MemoryError, UnicodeDecodeError) as e:
        raise _Malformed(f"data.pkl does not unpickle ({type(e).__name__}: {e})") from e


def _walk(archive: _Archive, obj: Any, prefix: str, out: dict[str, TensorRef], depth: int) -> None:
    """Collect ``obj``'s parameters, buffers, then its children's, as nn.Module.state_dict orders them."""
    if depth > MAX_DEPTH:
        raise _Malformed(f"modules nested deeper than {MAX_DEPTH}")
    decl = archive.declaration(obj.module, obj.name)
    where = prefix.rstrip(".") or "the top module"
    if decl.has_setstate or not isinstance(obj.state, dict) or obj.args or obj.kwargs:
        kind = "its own __setstate__" if decl.has_setstate else "a state that is not an attribute dict"
        raise _Refused(f"{where} ({obj.module}.{obj.name}) has {kind}, TorchScript code that jit.load "
                       "would run")
    for names in (decl.parameters, decl.buffers):
        for name in names:
            value = obj.state.get(name)
            if value is None:  # an absent optional parameter (e.g. bias=False)
                continue
            if not isinstance(value, TensorRef):
                raise _Malformed(f"{prefix}{name} is declared a tensor but holds {type(value).__name__}")
            out[prefix + name] = value
    for name, value in obj.state.items():
        if isinstance(value, InertObject) and _is_torchscript_class(value) \
                and archive.declaration(value.module, value.name).is_module:
            _walk(archive, value, f"{prefix}{name}.", out, depth + 1)


def _is_torchscript_class(obj: InertObject) -> bool:
    """A class of the archive's own code (``__torch__.*``); any other global is inert data, never a module."""
    return obj.module == "__torch__" or obj.module.startswith("__torch__.")


def read_state_dict(path: Path | str) -> dict[str, Any]:
    """What TorchScript's ``jit.load(path).state_dict()`` gives, without running or importing anything from the
    file: name -> tensor (plain tensors, not Parameters), memory-mapped copy-on-write from the file.

    Raises :class:`CheckpointError` (naming the file) for anything that is not a well-formed TorchScript archive,
    for a module with custom ``__setstate__`` code, and for a tensor outside its storage."""
    path = Path(path)
    try:
        archive = _open(path)
        with archive.zf:
            tree = _unpickle(archive)
            if not (isinstance(tree, InertObject) and _is_torchscript_class(tree)
                    and archive.declaration(tree.module, tree.name).is_module):
                raise _Malformed(f"data.pkl holds {type(tree).__name__}, not a module")
            refs: dict[str, TensorRef] = {}
            _walk(archive, tree, "", refs, 0)
            return _materialize(archive, refs)
    except _Refused as e:
        raise CheckpointError(f"{path}: refusing to load it: {e}", hint=_HINT) from e
    except _Malformed as e:
        raise CheckpointError(f"{path}: not a TorchScript archive we can read: {e}", hint=_HINT) from e


def _entry_span(archive: _Archive, name: str) -> tuple[int, int, bool]:
    """(offset of the entry's bytes in the file, their length, whether they are stored uncompressed)."""
    try:
        info = archive.zf.getinfo(name)
    except KeyError:
        raise _Malformed(f"it has no entry {name}") from None
    fp = archive.zf.fp
    fp.seek(info.header_offset)
    header = fp.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise _Malformed(f"the zip header of {name} is damaged")
    fields = _LOCAL_HEADER.unpack(header)
    start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1]
    stored = info.compress_type == zipfile.ZIP_STORED and info.compress_size == info.file_size
    return start, info.file_size, stored


def _materialize(archive: _Archive, refs: dict[str, TensorRef]) -> dict[str, Any]:
    import torch

    size = archive.path.stat().st_size
    mapped = None
    storages: dict[str, Any] = {}
    out = {}
    for name, ref in refs.items():
        s = ref.storage
        if s.key not in storages:
            dtype = getattr(torch, s.dtype)
            nbytes = s.numel * torch.empty((), dtype=dtype).element_size()
            start, length, stored = _entry_span(archive, f"{archive.root}/data/{s.key}")
            if nbytes > length:
                raise _Malformed(f"storage {s.key} needs {nbytes} bytes, its entry holds {length}")
            if nbytes == 0:
                storages[s.key] = torch.empty(0, dtype=dtype)
            elif stored and start + length <= size:
                if mapped is None:
                    with open(archive.path, "rb") as f:
                        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
                storages[s.key] = torch.frombuffer(mapped, dtype=dtype, count=s.numel, offset=start)
            else:  # a compressed entry (torch never writes one): decompress it
                raw = bytearray(archive.zf.read(f"{archive.root}/data/{s.key}")[:nbytes])
                storages[s.key] = torch.frombuffer(raw, dtype=dtype, count=s.numel)
        out[name] = storages[s.key].as_strided(ref.size, ref.stride, ref.offset)
    return out
