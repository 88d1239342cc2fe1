"""Progress without a terminal: status lines a log file can hold (nohup, Slurm, CI)."""

import pytest

from bench.cli import main
from bench.progress import Progress, StatusLines
from dip.recipe import CurvePoint


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def point(iteration: int, psnr: float) -> CurvePoint:
    return CurvePoint(iteration, 1e-3, 30.0, psnr, None)


def run_iterations(status: StatusLines, clock: Clock, start: int, stop: int, seconds_each: float) -> list[str]:
    """Iterations start+1 .. stop of ``seconds_each`` each; the lines they print."""
    lines = []
    for done in range(start + 1, stop + 1):
        clock.t += seconds_each
        line = status.update(done, point(done - 1, 27.25) if done == 600 else None)
        lines += [line] if line else []
    return lines


def test_a_status_line_every_interval_with_iteration_psnr_speed_and_time_left():
    clock = Clock()
    status = StatusLines("House seed 0", total=11000, start=0, every_s=300, clock=clock)
    assert run_iterations(status, clock, 0, 599, 0.5) == []  # 299.5 s: not yet due
    # 300 s for 600 iterations: 500 ms/iter, 10400 left: 5200 s
    assert run_iterations(status, clock, 599, 600, 0.5) == [
        "House seed 0: iteration 600/11000, PSNR 27.25 dB at iteration 599, 500 ms/iter, about 87 min left in this cell"]
    assert run_iterations(status, clock, 600, 700, 3.0)[0].endswith(  # the interval restarts at each line
        "iteration 700/11000, PSNR 27.25 dB at iteration 599, 3000 ms/iter, about 8.6 h left in this cell")


def test_a_pause_does_not_count_as_running_time():
    """SIGSTOP for an hour in the middle of an interval: the iteration that spans it is left out."""
    clock = Clock()
    status = StatusLines("House seed 0", total=11000, start=0, every_s=300, clock=clock)
    assert run_iterations(status, clock, 0, 100, 0.5) == []
    clock.t += 3600  # stopped, then continued: iteration 101 takes an hour of wall time
    line = run_iterations(status, clock, 100, 101, 0.5)
    assert line == ["House seed 0: iteration 101/11000, PSNR n/a, 500 ms/iter, about 91 min left in this cell"]


def test_a_resumed_cell_counts_from_where_it_resumed():
    clock = Clock()
    status = StatusLines("C.man seed 0", total=1000, start=900, every_s=10, clock=clock)
    clock.t += 10
    assert status.update(950, None) == "C.man seed 0: iteration 950/1000, PSNR n/a, 200 ms/iter, about 10 s left in this cell"


def test_zero_interval_prints_nothing():
    clock = Clock()
    status = StatusLines("House seed 0", total=100, start=0, every_s=0, clock=clock)
    clock.t += 1e6
    assert status.update(50, point(0, 20.0)) is None


def test_progress_without_a_terminal_prints_status_lines(capsys):
    """Under pytest stderr is not a terminal: the bars are off and the lines come instead."""
    clock = Clock()
    with Progress(20, enabled=True, log_every=60, clock=clock) as progress:
        with progress.cell("House seed 0", total=20) as callback:
            for i in range(20):
                clock.t += 6  # 6 s per iteration: a line every 10 iterations
                callback(i, point(i, 20.0 + i) if i % 5 == 0 else None)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("House seed 0: iteration")]
    assert lines == [
        "House seed 0: iteration 10/20, PSNR 25.00 dB at iteration 5, 6000 ms/iter, about 60 s left in this cell",
        "House seed 0: iteration 20/20, PSNR 35.00 dB at iteration 15, 6000 ms/iter, about 0 s left in this cell",
    ]


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
def test_log_every_must_be_a_finite_non_negative_number(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--profile", "smoke", "--log-every", value])
    assert exc.value.code == 2
    assert "--log-every" in capsys.readouterr().err
