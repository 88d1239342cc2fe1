import pytest
import torch

from dip.timing import IterationTimer, peak_memory_bytes


def run_ticks(timer: IterationTimer, n: int) -> None:
    timer.start()
    for _ in range(n):
        torch.ones(64).sum()
        timer.tick()


def test_warmup_iterations_are_excluded_and_windows_cover_the_rest():
    timer = IterationTimer("cpu", warmup=3, window=4)
    run_ticks(timer, 13)
    summary = timer.summary()
    assert summary.warmup_iterations == 3
    assert summary.timed_iterations == 10
    assert timer.window_sizes == [4, 4, 2]  # the partial last window is closed by summary()
    assert summary.clock == "perf_counter"
    assert summary.median_ms_per_iter > 0 and summary.iters_per_s == pytest.approx(1e3 / summary.median_ms_per_iter)
    assert summary.total_s > 0


def test_no_warmup_times_every_iteration():
    timer = IterationTimer("cpu", warmup=0, window=5)
    run_ticks(timer, 5)
    assert timer.summary().timed_iterations == 5


def test_summary_without_timed_iterations_says_so():
    timer = IterationTimer("cpu", warmup=5, window=5)
    run_ticks(timer, 3)
    with pytest.raises(ValueError, match="no iteration was timed"):
        timer.summary()


def test_bad_arguments():
    with pytest.raises(ValueError):
        IterationTimer("cpu", warmup=-1)
    with pytest.raises(ValueError):
        IterationTimer("cpu", window=0)


def test_cpu_peak_memory_is_process_rss():
    value, kind = peak_memory_bytes(torch.device("cpu"))
    assert kind == "process_peak_rss" and value > 10 * 2**20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_timer_uses_events():
    timer = IterationTimer("cuda", warmup=1, window=2)
    timer.start()
    for _ in range(5):
        torch.ones(1 << 20, device="cuda").sum()
        timer.tick()
    assert timer.summary().clock == "cuda_event"
