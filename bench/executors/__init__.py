"""Where the cells of a run execute, behind one function, :func:`bench.executors.execute.execute`:

- ``inline``: this process, one cell after another (bench.runner);
- ``local``: parallel subprocesses through submitit, one per visible GPU or ``--jobs N`` (local.py);
- ``slurm``: a submitit job array, one task per cell; returns once submitted (slurm.py).

Every cell is trained by the same code (bench.runner.run on a one-cell configuration for a job), so a
result never depends on the executor. Logs and the manifest of submitted jobs go to the run
directory's ``jobs/`` (bench.rundir).
"""
