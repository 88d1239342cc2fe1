"""How the cells of a run are executed, as the user chose it on the command line."""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import BenchError

EXECUTORS = ("inline", "local", "slurm")


DEFAULT_SLURM_TIME_MIN = 24 * 60  # a paper-profile cell takes minutes to hours; the job requeues on timeout


@dataclass(frozen=True)
class ExecutorOptions:
    """How the cells of a run are executed (none of it changes a result, so none of it is in a record)."""

    executor: str = "inline"
    jobs: int | None = None  # local: parallel jobs (default: one per visible GPU, else 1)
    slurm_partition: str | None = None
    slurm_time: int | None = None  # minutes per job (sbatch --time); None: DEFAULT_SLURM_TIME_MIN
    gpus_per_job: int = 1
    slurm_params: tuple[str, ...] = ()  # KEY=VALUE, passed to sbatch as --KEY=VALUE

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise BenchError(f"unknown executor {self.executor!r}; choose from {', '.join(EXECUTORS)}")
        if self.jobs is not None and (self.jobs < 1 or self.executor != "local"):
            raise BenchError("--jobs takes a positive number, with --executor local")
        slurm_only = self.slurm_partition is not None or self.slurm_params or self.slurm_time is not None
        if slurm_only and self.executor != "slurm":
            raise BenchError("--slurm-partition, --slurm-time and --slurm-param need --executor slurm")
        if (self.slurm_time is not None and self.slurm_time <= 0) or self.gpus_per_job < 0:
            raise BenchError("--slurm-time must be positive and --gpus-per-job >= 0")
        bad = [p for p in self.slurm_params if "=" not in p or not p.split("=", 1)[0]]
        if bad:
            raise BenchError(f"--slurm-param expects KEY=VALUE (an sbatch option without its dashes), got {bad[0]!r}")

    def sbatch_parameters(self) -> dict:
        """What submitit's SlurmExecutor gets: partition, time, GPUs, and the pass-through options."""
        params: dict = {"time": self.slurm_time or DEFAULT_SLURM_TIME_MIN, "gpus_per_node": self.gpus_per_job, "nodes": 1, "ntasks_per_node": 1}
        if self.slurm_partition:
            params["partition"] = self.slurm_partition
        extra = dict(p.split("=", 1) for p in self.slurm_params)
        if extra:
            params["additional_parameters"] = extra
        return params
