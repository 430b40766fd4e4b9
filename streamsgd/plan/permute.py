"""A window's row permutation, compiled: the same integers as ``Generator.permutation(n)``.

NumPy's shuffle swaps each place ``i`` (from the last down) with a random place ``j <= i``,
one cache miss per row once the index array outgrows the cache (16 MB for 2M rows), each
waiting for the one before. Here the same draws (``random_interval``: the bit generator's
next 32-bit word masked to the bits of ``i``, redrawn while above ``i``) come from the
generator's own C function, a block of ``AHEAD`` places at a time, and each place is
prefetched as it is drawn, so the block's swaps find their lines in the cache. The swaps
run in NumPy's order, so the permutation and the generator's state afterwards are NumPy's
exactly (tests/test_rng.py): a plan, and every model trained on it, does not change.
"""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from numpy.typing import NDArray

from ..hints import prefetch

#: Places drawn (and prefetched) before their swaps are made.
AHEAD = 32

#: The largest ``i`` whose draw takes a 32-bit word (NumPy's ``random_interval``); a window
#: of more rows than this falls back to NumPy.
MAX_32 = 0xFFFFFFFF


@intrinsic
def _next_uint32(typingctx, function, state):
    """Call the bit generator's ``next_uint32(state)`` at addresses ``function``, ``state``."""
    sig = types.uint32(function, state)

    def codegen(context, builder, signature, args):
        byte_pointer = ir.IntType(8).as_pointer()
        call_type = ir.FunctionType(ir.IntType(32), [byte_pointer])
        target = builder.inttoptr(args[0], call_type.as_pointer())
        return builder.call(target, [builder.inttoptr(args[1], byte_pointer)])

    return sig, codegen


@njit(nogil=True, cache=True)
def _shuffle(out, function, state):
    """NumPy's Fisher–Yates shuffle of ``out`` (``_shuffle_raw`` with ``random_interval``),
    its draws made ``AHEAD`` places before their swaps."""
    drawn = np.empty(AHEAD, np.int64)
    i = out.size - 1
    while i >= 1:
        m = min(AHEAD, i)
        for k in range(m):
            top = np.uint32(i - k)
            mask = top
            mask |= mask >> np.uint32(1)
            mask |= mask >> np.uint32(2)
            mask |= mask >> np.uint32(4)
            mask |= mask >> np.uint32(8)
            mask |= mask >> np.uint32(16)
            value = _next_uint32(function, state) & mask
            while value > top:
                value = _next_uint32(function, state) & mask
            drawn[k] = value
            prefetch(out, value)
        for k in range(m):
            j, place = drawn[k], i - k
            held = out[j]
            out[j] = out[place]
            out[place] = held
        i -= m


def permutation(rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    """``rng.permutation(n)``: the same integers, and ``rng`` left in the same state."""
    if n - 1 > MAX_32:
        return rng.permutation(n)
    out = np.arange(n, dtype=np.int64)
    interface = rng.bit_generator.ctypes
    function = ctypes.cast(interface.next_uint32, ctypes.c_void_p).value
    with rng.bit_generator.lock:
        _shuffle(out, function, interface.state_address)
    return out


@njit(nogil=True, cache=True)
def inverse(order):
    """The permutation ``slots`` with ``slots[order[k]] = k``: where each of a window's rows
    (chunk after chunk) goes in its training order. One pass of random writes, which the
    store buffer absorbs; NumPy's ``slots[order] = arange(n)`` makes an index array first."""
    slots = np.empty(order.size, np.int64)
    for k in range(order.size):
        slots[order[k]] = k
    return slots
