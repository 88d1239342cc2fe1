"""keep_heap (dip.heap): inside the block freed memory is reused without page faults, after it large blocks
are mapped afresh again; the switch on the paths and its clear errors. Page faults are counted by the
kernel (getrusage), not timed: the counts do not depend on the machine's load."""

import dataclasses
import resource

import pytest
import torch

import bench.execution
import dip.heap
from bench.config import PROFILES, build_config
from bench.execution import cell_recipe
from bench.flags import OneLineParser, add_config_flags
from dip.recipe import RestoreConfig
from dip.trainer import check_device

pytestmark = pytest.mark.skipif(not dip.heap.available(), reason="malloc is not glibc's")

BLOCK = 40 << 20  # above glibc's 32 MiB mmap ceiling, as the paper network's fp32 activations at 256x256
PAGES = BLOCK // resource.getpagesize()


def faults_of_a_touched_block(size: int = BLOCK) -> int:
    """Page faults of allocating a ``size``-byte tensor and writing all of it (then it is freed)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(size // 4)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_inside_the_block_a_freed_block_is_reused_without_faults():
    with dip.heap.kept_heap():
        faults_of_a_touched_block()  # the heap grows once
        assert faults_of_a_touched_block() < PAGES // 100


def test_after_the_block_large_blocks_are_mapped_and_faulted_again():
    """Under glibc's defaults a block over 32 MiB that the heap's free memory cannot hold is mapped, faulted
    in and unmapped when freed, every time (a block the heap can hold is reused, as glibc would)."""
    with dip.heap.kept_heap():
        faults_of_a_touched_block()
    faults_of_a_touched_block(3 * BLOCK)
    assert faults_of_a_touched_block(3 * BLOCK) > 3 * PAGES // 2


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


def parse(*argv: str) -> dict:
    parser = OneLineParser(prog="t")
    add_config_flags(parser)
    return dict(vars(parser.parse_args(list(argv))))


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
