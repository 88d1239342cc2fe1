"""How a recipe is executed: arithmetic precision, memory layout and kernels. None of it changes the
recipe's math beyond rounding. Torch-free, so stored records can be read without PyTorch."""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16")  # autocast dtypes; fp16 adds a GradScaler

# The values of the execution fields on the reference path: the recipe exactly as written (eager fp32,
# contiguous tensors, plain Adam).
REFERENCE_EXECUTION = {"precision": "fp32", "channels_last": False, "fused_adam": False, "tf32": False,
                       "cudnn_benchmark": False, "compile": False, "cuda_graphs": False, "winograd": False,
                       "matmul_1x1": False, "keep_heap": False}
EXECUTION_FIELDS = tuple(REFERENCE_EXECUTION)
# The fields an execution path chooses unless the user sets them (the harness resolves them per machine:
# "auto" precision, None switches); compile and CUDA graphs are always the user's explicit choice.
PATH_CHOSEN_FIELDS = ("precision", "channels_last", "fused_adam", "tf32", "cudnn_benchmark", "winograd", "matmul_1x1", "keep_heap")


def execution_path(recipe: dict) -> str:
    """'reference' if a resolved recipe (as stored in a record) ran exactly as written, else 'fast'."""
    return "reference" if all(recipe.get(k, v) == v for k, v in REFERENCE_EXECUTION.items()) else "fast"
