"""Compiled hints to the CPU that change no result: a prefetch of the line a loop will need.

A loop that reads (or writes) places it knows ahead, one cache miss each, can ask for them
a few iterations early, so the misses overlap instead of waiting one after another: the
window's row permutation (``plan.permute``) and the first window's moments in chunk order
(``compute.losses.moments``).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, array, i):
    """Ask for the cache line of ``array[i]`` (a 1-D array, any layout), to be used soon."""
    sig = types.void(array, i)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0])
        byte_pointer = ir.IntType(8).as_pointer()
        stride = builder.extract_value(data.strides, 0)
        offset = builder.mul(args[1], stride)
        address = builder.gep(builder.bitcast(data.data, byte_pointer), [offset])
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0i8")
        # write intent (1): a permutation swaps the place; a read would do for moments, and a
        # line fetched for writing serves a read as well; locality 3, data cache (1)
        builder.call(hint, [address, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
