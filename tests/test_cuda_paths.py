"""The CUDA paths' logic, on the CPU (issue 24): which device is current while a trainer on cuda:N works,
the TF32 and autotuning flags each trainer steps under, that a finished trainer is freed by reference
counting, where Adam's step counts land on a load, the precision the fast path picks for a GPU, and what
a batched cell's checkpoint holds.

No GPU here: the torch.cuda functions involved are replaced by recording stand-ins, and a trainer built
on the CPU is handed a CUDA device afterwards, so that its steps take the CUDA branches. Its tensors
stay on the CPU; the steps those tests make are recorded, not run.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import weakref
from functools import partial

import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401  (see below)

import dip.trainer
from bench.config import build_config
from bench.execution import cell_recipe, resolve_precision
from dip.batched import BatchedTrainer
from dip.graphs import WholeStepGraphs, cuda_capture
from dip.masks import bernoulli_mask
from dip.nets import SkipNetConfig, build_network
from dip.recipe import RestoreConfig
from dip.timing import IterationTimer
from dip.trainer import Trainer, adam_step_device

TINY_NET = SkipNetConfig(scales=2, channels_down=8, channels_up=8, channels_skip=4)
IMAGE = np.random.default_rng(24).random((16, 16), dtype=np.float32)
MASK = bernoulli_mask((16, 16), seed=0, name="cuda-paths")
REFERENCE = RestoreConfig(net=TINY_NET)
FAST = RestoreConfig(fused_adam=True, tf32=True, cudnn_benchmark=True, net=TINY_NET)
CUDA1 = torch.device("cuda", 1)


def trainer_of(config: RestoreConfig, seed: int = 0) -> Trainer:
    return Trainer(IMAGE, MASK, config, partial(build_network, config.net), seed=seed, device=torch.device("cpu"))


def backend_flags() -> tuple[bool, bool, bool]:
    """(cudnn.benchmark, cudnn.allow_tf32, cuda.matmul.allow_tf32): process-wide, settable on a CPU build."""
    return torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.fixture
def current_cuda_device(monkeypatch) -> list[int]:
    """torch.cuda.device replaced by a stand-in: the returned list's last entry is the current device's
    index (0, as at the start of a process, outside every ``torch.cuda.device`` block)."""
    current = [0]

    @contextlib.contextmanager
    def device(which):
        current.append(which if isinstance(which, int) else torch.device(which).index)
        try:
            yield
        finally:
            current.pop()

    monkeypatch.setattr(torch.cuda, "device", device)
    return current


@pytest.fixture
def no_garbage_collection():
    """Only reference counting frees objects in the test: a cycle would keep them.

    (torch's first Optimizer of a process imports torch._dynamo, and that import leaves a reference
    cycle through the frames that made it, the first trainer's ``__init__`` among them: imported at the
    top of this file, it cannot hold a trainer of these tests.)"""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def stepping_on(stepper, device: torch.device):
    """``stepper`` (built on the CPU) as one on ``device``: its steps take that device's branches."""
    stepper.device = device
    return stepper


def record_steps(stepper, current: list[int], monkeypatch) -> list[tuple[str, int, tuple[bool, bool, bool]]]:
    """Replace ``stepper``'s eager halves by recorders of (which half, the current device, the backend
    flags) at the moment they would run; returns the list they fill."""
    seen = []

    def recorder(half: str):
        return lambda *args: seen.append((half, current[-1], backend_flags()))

    monkeypatch.setattr(stepper, "eager_forward_backward", recorder("forward_backward"))
    monkeypatch.setattr(stepper, "eager_optimizer_step", recorder("optimizer_step"))
    return seen


def capture_once(body_a, body_b):
    """An eager stand-in for cuda_capture: runs each body once, as a capture records it, and returns
    replays that hold no reference to the bodies (a CUDA graph's replay holds no Python objects)."""
    body_a()
    body_b()
    return (lambda: None), (lambda: None)


def steps(stepper, count: int) -> None:
    for _ in range(count):
        stepper.forward_backward()
        stepper.optimizer_step()


# 1. cuda:N is the current device while a trainer on it works.

@pytest.mark.parametrize("kind", ["trainer", "batch"])
def test_a_trainer_on_cuda_1_steps_with_cuda_1_current(kind, current_cuda_device, monkeypatch):
    stepper = trainer_of(REFERENCE) if kind == "trainer" else BatchedTrainer([trainer_of(REFERENCE, k) for k in range(2)])
    seen = record_steps(stepping_on(stepper, CUDA1), current_cuda_device, monkeypatch)
    steps(stepper, 2)
    assert [(half, index) for half, index, _ in seen] == [("forward_backward", 1), ("optimizer_step", 1)] * 2
    assert current_cuda_device == [0]  # and the previous device current again after each half


def test_graphs_are_captured_on_the_steppers_device(current_cuda_device, monkeypatch):
    """The capture runs with the stepper's device current, on a capture stream made on that device, after
    a synchronisation of that device."""
    log = []

    class Stream:
        def __init__(self, device=None):
            self.device = torch.device(device)

    class CUDAGraph:
        def register_generator_state(self, generator):
            log.append(("generator", generator))

        def pool(self):
            return "pool of A"

        def replay(self):
            pass

    @contextlib.contextmanager
    def graph(cuda_graph, pool=None, stream=None):
        log.append(("capture", pool, stream.device, current_cuda_device[-1]))
        yield

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", CUDAGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append(("synchronize", device)))
    generator = torch.Generator()
    cuda_capture(CUDA1, [generator])(lambda: log.append(("body A", current_cuda_device[-1])),
                                     lambda: log.append(("body B", current_cuda_device[-1])))
    assert log == [("generator", generator), ("synchronize", CUDA1),
                   ("capture", None, CUDA1, 1), ("body A", 1), ("capture", "pool of A", CUDA1, 1), ("body B", 1)]
    assert current_cuda_device == [0]


def test_cuda_timing_events_are_recorded_on_the_timed_devices_stream(monkeypatch):
    recorded = []

    class Event:
        def __init__(self, enable_timing: bool = False):
            assert enable_timing

        def record(self, stream=None):
            recorded.append(stream)

        def synchronize(self):
            pass

        def elapsed_time(self, later) -> float:
            return 6.0

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("current stream of", device))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    timer = IterationTimer(CUDA1, warmup=0, window=2)
    timer.start()
    for _ in range(4):
        timer.tick()
    summary = timer.summary()
    assert recorded == [("current stream of", CUDA1)] * 3  # the start and two window ends, all on cuda:1
    assert (summary.clock, summary.timed_iterations, summary.median_ms_per_iter) == ("cuda_event", 4, 3.0)


# 3. TF32 and cuDNN autotuning per trainer, during its own steps.

@pytest.fixture
def outside_flags():
    """The process's flags set to neither path's values (autotuning on, cuDNN TF32 off, matmul TF32 on),
    so that a step that does not set its own shows them; all restored after the test."""
    with dip.trainer.cuda_backend_flags(cudnn_benchmark=True, tf32=False):
        torch.backends.cuda.matmul.allow_tf32 = True
        yield backend_flags()


def test_each_trainer_steps_with_its_own_tf32_and_autotuning(outside_flags, current_cuda_device, monkeypatch):
    """A fast trainer built before a reference one (as bench.speed.measure_ratio does), then their steps
    interleaved: each step sees its own trainer's flags, and the process's are restored after it."""
    monkeypatch.setattr(dip.trainer, "check_device", lambda config, device: None)  # CUDA-only switches, built on the CPU
    fast, reference = stepping_on(trainer_of(FAST), CUDA1), stepping_on(trainer_of(REFERENCE), CUDA1)
    seen_fast = record_steps(fast, current_cuda_device, monkeypatch)
    seen_reference = record_steps(reference, current_cuda_device, monkeypatch)
    for _ in range(2):
        for trainer in (fast, reference):
            trainer.forward_backward()
            assert backend_flags() == outside_flags
            trainer.optimizer_step()
            assert backend_flags() == outside_flags
    assert [flags for _, _, flags in seen_fast] == [(True, True, True)] * 4
    assert [flags for _, _, flags in seen_reference] == [(False, False, False)] * 4


def test_the_flags_are_restored_when_a_step_raises():
    before = backend_flags()
    with pytest.raises(RuntimeError), dip.trainer.cuda_backend_flags(tf32=not before[1], cudnn_benchmark=not before[0]):
        raise RuntimeError("a failing step")
    assert backend_flags() == before


def test_the_cpu_path_sets_no_flags(monkeypatch):
    """On the CPU nothing process-wide is touched: not the flags, not torch.cuda."""
    monkeypatch.setattr(torch.cuda, "device", None)  # would raise if entered
    trainer = trainer_of(REFERENCE)
    before = backend_flags()
    seen = record_steps(trainer, [None], monkeypatch)
    steps(trainer, 1)
    assert [flags for _, _, flags in seen] == [before] * 2


# 5. A finished trainer is freed by reference counting.

def test_a_finished_trainer_with_graphs_is_freed_without_a_garbage_collection(no_garbage_collection):
    trainer = trainer_of(RestoreConfig(fused_adam=True, net=TINY_NET))
    trainer.graphs = WholeStepGraphs(trainer, capture=capture_once, warmup=1)
    steps(trainer, 3)  # a warm-up step, the capture, a replay
    assert trainer.graphs.captured
    alive = weakref.ref(trainer)
    del trainer
    assert alive() is None


def test_a_finished_batch_is_freed_without_a_garbage_collection(no_garbage_collection):
    batch = BatchedTrainer([trainer_of(REFERENCE, k) for k in range(2)])
    steps(batch, 2)
    batch.final_outputs()
    alive, cell_alive = weakref.ref(batch), weakref.ref(batch.trainers[0])
    del batch
    assert alive() is None and cell_alive() is None


def test_a_finished_batch_with_graphs_is_freed_without_a_garbage_collection(no_garbage_collection):
    batch = BatchedTrainer([trainer_of(RestoreConfig(fused_adam=True, net=TINY_NET), k) for k in range(2)])
    batch.graphs = WholeStepGraphs(batch, capture=capture_once, warmup=1)
    steps(batch, 3)
    alive = weakref.ref(batch)
    del batch
    assert alive() is None


def test_graphs_outliving_their_trainer_say_so():
    trainer = trainer_of(RestoreConfig(fused_adam=True, net=TINY_NET))
    graphs = WholeStepGraphs(trainer, capture=capture_once)
    del trainer
    gc.collect()
    with pytest.raises(RuntimeError, match="freed"):
        graphs.forward_backward()


# 6. Adam's step counts where a fresh Adam keeps them.

@pytest.mark.parametrize("fused, capturable, where", [(False, False, "cpu"), (True, False, "cuda:1"),
                                                      (False, True, "cuda:1"), (True, True, "cuda:1")])
def test_adams_step_counts_stay_on_the_cpu_unless_fused_or_capturable(fused, capturable, where):
    assert adam_step_device({"fused": fused, "capturable": capturable}, CUDA1) == torch.device(where)


@pytest.mark.parametrize("fused", [False, True])
def test_a_fresh_adams_step_counts_are_where_adam_step_device_says(fused):
    trainer = trainer_of(RestoreConfig(fused_adam=fused, net=TINY_NET))
    steps(trainer, 1)
    group = trainer.optimizer.param_groups[0]
    assert {state["step"].device for state in trainer.optimizer.state.values()} == {adam_step_device(group, trainer.device)}


def test_a_loaded_or_restored_optimizer_state_puts_the_step_counts_where_adam_step_device_says(monkeypatch):
    """Resuming (load_state_dict) and restoring a kept state (restore_optimizer_state) both place Adam's step
    counts by adam_step_device; torch's own load leaves plain Adam's where the loaded state had them."""
    trainer = trainer_of(REFERENCE)
    steps(trainer, 2)
    state = copy.deepcopy(trainer.state_dict())
    kept = trainer.kept_optimizer_state()
    # A device the CPU can move tensors to, other than the CPU: where the step counts would land
    monkeypatch.setattr(dip.trainer, "adam_step_device", lambda group, device: torch.device("meta"))
    resumed = trainer_of(REFERENCE)
    resumed.load_state_dict(state)
    assert {s["step"].device.type for s in resumed.optimizer.state.values()} == {"meta"}
    assert state["optimizer"]["state"][0]["step"].device.type == "cpu"  # the given state is left as it was
    restored = trainer_of(REFERENCE)
    restored.restore_optimizer_state(kept)
    assert {s["step"].device.type for s in restored.optimizer.state.values()} == {"meta"}


def test_a_resumed_plain_adam_keeps_its_values():
    trainer = trainer_of(REFERENCE)
    steps(trainer, 2)
    resumed = trainer_of(REFERENCE)
    resumed.load_state_dict(copy.deepcopy(trainer.state_dict()))
    for live, loaded in zip(trainer.optimizer.state.values(), resumed.optimizer.state.values()):
        assert loaded["step"].device.type == "cpu" and float(loaded["step"]) == float(live["step"]) == 2.0
        assert torch.equal(loaded["exp_avg"], live["exp_avg"]) and torch.equal(loaded["exp_avg_sq"], live["exp_avg_sq"])


# 8. The fast path's precision on a GPU.

@pytest.fixture
def fake_gpu(monkeypatch, current_cuda_device):
    """A visible GPU whose bf16 is native or emulated: set ``native`` in the returned dict. ``asked``
    collects (current device, including_emulation) of each torch.cuda.is_bf16_supported call."""
    gpu = {"native": False, "asked": []}

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        gpu["asked"].append((current_cuda_device[-1], including_emulation))
        return gpu["native"] or including_emulation  # a V100 or T4 emulates it; torch's default counts that

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return gpu


def fast_config(**overrides):
    return build_config("paper", {"run.path": "fast"} | overrides)


def test_a_gpu_without_native_bf16_runs_fp16(fake_gpu):
    assert resolve_precision(fast_config(), CUDA1) == "fp16"
    assert fake_gpu["asked"] == [(1, False)]  # asked of cuda:1 itself, emulation not counted


@pytest.mark.parametrize("overrides", [{"run.cells_per_gpu": 2}, {"recipe.cuda_graphs": True}])
def test_without_native_bf16_batches_and_graphs_run_fp32(fake_gpu, overrides):
    """They take no GradScaler, so no fp16 (dip.batched.check_batchable, RestoreConfig's check)."""
    assert resolve_precision(fast_config(**overrides), CUDA1) == "fp32"


def test_a_gpu_with_native_bf16_runs_bf16(fake_gpu):
    fake_gpu["native"] = True
    assert resolve_precision(fast_config(), CUDA1) == "bf16"
    assert resolve_precision(fast_config(**{"run.cells_per_gpu": 2}), CUDA1) == "bf16"
    assert resolve_precision(build_config("paper", {"run.path": "reference"}), CUDA1) == "fp32"


@pytest.mark.parametrize("native", [True, False])
def test_the_fast_path_on_a_gpu_turns_on_tf32_and_autotuning_and_the_reference_path_does_not(fake_gpu, native):
    """cell_recipe's defaults for a CUDA device, resolved on a CPU: the fast path takes TF32 and cuDNN
    autotuning (and fused Adam, channels_last with a low precision); the reference path takes none of them
    and fp32; an explicit flag wins; on the CPU both switches stay off whatever the path."""
    fake_gpu["native"] = native
    fast = cell_recipe(fast_config(), CUDA1, out_channels=1)
    assert (fast.precision, fast.tf32, fast.cudnn_benchmark, fast.fused_adam, fast.channels_last) == (
        "bf16" if native else "fp16", True, True, True, True)
    reference = cell_recipe(build_config("paper", {"run.path": "reference"}), CUDA1, out_channels=1)
    assert (reference.precision, reference.tf32, reference.cudnn_benchmark, reference.fused_adam,
            reference.channels_last) == ("fp32", False, False, False, False)
    explicit = cell_recipe(fast_config(**{"run.tf32": False, "run.cudnn_benchmark": False}), CUDA1, out_channels=1)
    assert (explicit.tf32, explicit.cudnn_benchmark) == (False, False)
    on_cpu = cell_recipe(fast_config(), torch.device("cpu"), out_channels=1)
    assert (on_cpu.tf32, on_cpu.cudnn_benchmark) == (False, False)


def test_fp16_trains_with_a_grad_scaler():
    assert trainer_of(RestoreConfig(precision="fp16", net=TINY_NET)).scaler is not None
    assert trainer_of(REFERENCE).scaler is None


# 10. A batched cell's checkpoint holds that cell alone.

def saved_bytes(tensors: dict) -> int:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.tell()


def test_a_batched_cells_state_holds_that_cells_tensors_alone():
    batch = BatchedTrainer([trainer_of(REFERENCE, k) for k in range(3)])
    steps(batch, 1)
    state = batch.cell(1).state_dict()
    for name, tensor in state["net"].items():
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
    for slot in state["optimizer"]["state"].values():
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in slot.values())
    # the same values as the live stacks, and the size of one network's weights on disk
    stacks = batch.params | batch.buffers
    assert all(torch.equal(tensor, stacks[name][1]) for name, tensor in state["net"].items())
    alone = trainer_of(REFERENCE, 1).net.state_dict()
    assert saved_bytes(state["net"]) <= 1.02 * saved_bytes(alone)
