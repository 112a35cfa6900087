"""How much GPU memory a model needs: a rule of thumb, written down.

Assumptions (also in ``docs/runner.md``):

* Weights take ``parameters * bytes(dtype)``, split evenly over ``gpus``
  (tensor / pipeline / fully sharded data parallel); nothing is replicated.
* ``training=True`` adds gradients in the same dtype and Adam's two fp32
  moments (8 bytes per parameter), plus an fp32 master copy of the weights
  (4 bytes) when the dtype is narrower than fp32 (mixed precision): 16 bytes
  per parameter for fp16/bf16, as in the ZeRO paper. All of it is sharded.
* Activations, KV caches, temporary buffers and allocator fragmentation are
  not modelled one by one; ``overhead`` (default 20 %) scales the total for
  them. Long sequences or large batches need a larger ``overhead``.
* Every GPU also pays a fixed ``context_mb`` (CUDA context, cuBLAS/cuDNN
  workspaces; 500 MiB by default).
* MB means MiB (2**20 bytes), the unit NVML and the pool use.
"""

from __future__ import annotations

import math

from .checks import check_bool, check_int, check_number, check_str

__all__ = ["DTYPE_BYTES", "estimate_memory_mb"]

#: Bytes per parameter of the dtypes :func:`estimate_memory_mb` knows.
DTYPE_BYTES: dict[str, float] = {
    "float64": 8,
    "float32": 4,
    "tf32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8": 1,
    "int8": 1,
    "int4": 0.5,
}
_ALIASES = {
    "fp64": "float64",
    "fp32": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp8": "float8",
    "float": "float32",
    "double": "float64",
}

_MIB = 2**20


def estimate_memory_mb(
    parameters: float,
    *,
    dtype: str = "float16",
    gpus: int = 1,
    training: bool = False,
    overhead: float = 0.2,
    context_mb: int = 500,
) -> int:
    """MiB that each of ``gpus`` GPUs needs for a model of ``parameters`` parameters.

    Use it for ``min_memory_mb``, and to choose ``required_gpus`` as the
    smallest count whose estimate fits your GPUs:

    >>> estimate_memory_mb(7e9)                    # 7B model, fp16 inference, 1 GPU
    16522
    >>> estimate_memory_mb(7e9, training=True, gpus=8)
    16522
    >>> next(k for k in (1, 2, 4, 8) if estimate_memory_mb(13e9, gpus=k) <= 24_000)
    2

    See the module docstring for what is and is not counted.
    """
    count = check_number("parameters", parameters, minimum=0)
    known = ", ".join(sorted(DTYPE_BYTES))
    check_str("dtype", dtype, allowed=f"a str, one of {known}")
    name = _ALIASES.get(dtype, dtype)
    if name not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {known} (or an alias like 'bf16'), got {dtype!r}")
    shards = check_int("gpus", gpus, 1)
    check_bool("training", training)
    extra = check_number("overhead", overhead, minimum=0)
    context = check_int("context_mb", context_mb, 0)
    width = DTYPE_BYTES[name]
    per_parameter = width
    if training:
        per_parameter += width + 8 + (4 if width < 4 else 0)
    sharded = count * per_parameter / shards
    mib = sharded * (1 + extra) / _MIB
    if not math.isfinite(mib):
        raise ValueError(
            f"parameters={count!r} with overhead={extra!r} gives an estimate beyond "
            "the float range; no GPU has that much memory"
        )
    return math.ceil(mib) + context
