"""keep_heap (dip.heap): inside the block large tensors come from the heap and stay there when freed, after it
they are mapped on their own again (where memory lives, not how fast: the page faults it saves are measured
by the speed benchmark, docs/speed.md); nothing computed changes; the switch on the paths and its errors."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import bench.execution
import dip.heap
from bench.config import PROFILES, build_config
from bench.execution import cell_recipe
from dip.recipe import RestoreConfig
from dip.trainer import check_device
from tests.test_config import parse

pytestmark = pytest.mark.skipif(not dip.heap.available(), reason="malloc is not glibc's")

BLOCK = 40 << 20  # above glibc's 32 MiB mmap ceiling, as the paper network's fp32 activations at 256x256

# Run in a fresh interpreter, where the heap has no history (the tests before this one leave holes of every
# size). Where a block over 32 MiB lives: in the brk heap (below the program break) or mapped on its own;
# and whether freeing the block at the heap's top gives memory back (the break moves down).
SCRIPT = f"""
import ctypes, json, torch, dip.heap
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
def in_heap(tensor):
    return tensor.data_ptr() < libc.sbrk(0)
with dip.heap.kept_heap():
    block = torch.ones({BLOCK // 4})
    inside, brk = in_heap(block), libc.sbrk(0)
    del block
    kept = libc.sbrk(0) == brk
after = torch.ones({4 * BLOCK // 4})
print(json.dumps({{"inside_in_heap": inside, "kept_after_free": kept, "after_in_heap": in_heap(after)}}))
"""


@pytest.fixture(scope="module")
def where() -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_inside_the_block_a_large_tensor_lives_in_the_heap_and_stays_after_it_is_freed(where):
    assert where["inside_in_heap"] and where["kept_after_free"], where


def test_after_the_block_large_tensors_are_mapped_on_their_own_again(where):
    """glibc's default for a block over 32 MiB: mapped when allocated, unmapped (so faulted in anew) when freed."""
    assert not where["after_in_heap"], where


def test_without_glibc_the_switch_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(dip.heap, "available", lambda: False)
    with pytest.raises(RuntimeError, match="keep_heap needs glibc's malloc"):
        with dip.heap.kept_heap():
            pass
    with pytest.raises(ValueError, match="keep_heap needs glibc's malloc"):
        check_device(dataclasses.replace(RestoreConfig(), keep_heap=True), torch.device("cpu"))


def test_it_is_a_cpu_switch():
    with pytest.raises(ValueError, match="keep_heap is a CPU switch"):
        check_device(dataclasses.replace(RestoreConfig(), keep_heap=True), torch.device("cuda"))


@pytest.mark.parametrize("fast_bf16, expected", [(False, True), (True, False)])
def test_the_fast_path_keeps_the_heap_where_it_runs_fp32_on_a_cpu(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(bench.execution, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert cell_recipe(PROFILES["smoke"], torch.device("cpu"), 1).keep_heap == expected


def test_explicit_flags_override_the_paths_choice():
    cpu = torch.device("cpu")
    assert not cell_recipe(build_config("smoke", parse("--path", "reference")), cpu, 1).keep_heap
    assert cell_recipe(build_config("smoke", parse("--path", "reference", "--keep-heap")), cpu, 1).keep_heap
    assert not cell_recipe(build_config("smoke", parse("--precision", "fp32", "--no-keep-heap")), cpu, 1).keep_heap


def test_nothing_computed_changes():
    """Three steps of a tiny network on the reference path with and without the kept heap: the same bits."""
    from tests.test_flag_effects import recipe_of, trainer_of

    def three_steps(recipe: RestoreConfig) -> list[torch.Tensor]:
        trainer = trainer_of(recipe)
        outputs = []
        for _ in range(3):
            out, _ = trainer.forward_backward()
            trainer.optimizer_step()
            outputs.append(out.detach().clone())
        return outputs

    kept = recipe_of("--keep-heap")
    assert kept.keep_heap and not recipe_of().keep_heap
    for a, b in zip(three_steps(kept), three_steps(recipe_of())):
        assert torch.equal(a, b)
