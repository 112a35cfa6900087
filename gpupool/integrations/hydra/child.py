"""The entry point of a job's process: ``python -m gpupool.integrations.hydra.child``.

Arguments: the launch file, the job file and the result file to write
(gpupool/integrations/hydra/payload.py). It restores Hydra's singletons as
the launcher had them, runs Hydra's own ``run_job`` (which makes the job's
output directory, writes ``.hydra/``, configures the job's logging, calls the
callbacks and catches the task's exception, as under Hydra's basic launcher)
and writes the ``JobReturn`` back. It exits 0 whenever it wrote a result, a
failed task included; any other exit means the process itself failed (it
could not unpickle the job, it was killed), which the launcher reports with
the end of the job's output.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(
            "usage: python -m gpupool.integrations.hydra.child LAUNCH_FILE JOB_FILE RESULT_FILE "
            "(started by the gpupool Hydra launcher, not by hand)",
            file=sys.stderr,
        )
        return 2
    launch_file, job_file, result_file = map(Path, argv)
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals

    from .payload import read_job, read_launch, write_result

    launch = read_launch(launch_file)
    sweep_config = read_job(job_file)
    setup_globals()
    # After setup_globals: the launcher's resolvers (its own registrations included) win.
    Singleton.set_state(launch.singleton_state)
    job_return = run_job(
        hydra_context=launch.hydra_context,
        task_function=launch.task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    if job_return.status is JobStatus.FAILED:
        # run_job caught it; the job's output (job.out) should still show where it failed.
        traceback.print_exception(job_return._return_value, file=sys.stderr)
    write_result(result_file, job_return)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
