"""How a study's runs are carried out: one after another in this process, or as Ray tasks.

A study plans its runs as :class:`Task` s (one (target, method, seed) each, and the run
whose trained model it adapts, when its method ``trains_as`` another) and hands them to
an executor of :data:`EXECUTORS`, named by the config's ``executor.name``:

- ``sequential``: each run in this process, in order, its epochs logged to MLflow live;
- ``ray``: each run a Ray task declaring ``executor.cpus`` CPUs (1 when unset) and
  ``executor.gpus`` GPUs (fractions share a GPU), on a Ray instance started on this
  machine or, with ``executor.address``, on an existing cluster. A task runs once the run
  it ``trains_as`` has finished. Each pair's prepared data goes into the object store once.
  Federated runs (and runs that adapt their models) run in the driver, one after another,
  after the Ray tasks: Flower's simulation engine is itself a Ray application.

An executor yields each task with its outcome as it finishes: the result the run wrote
(as :func:`senolab.tracking.runfolder.mark_done` recorded it) or a :class:`Failure`; a
failing run never stops the others. Workers write only the run's own folder; the driver
logs to MLflow and aggregates. Every run's torch thread count is ``executor.cpus`` under
both executors (CPU results depend on it), so the two give the same results.
"""
from __future__ import annotations

import os
import socket
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch
from tqdm.auto import tqdm

from senolab._optional import require
from senolab.adaptation import METHODS
from senolab.registry import Registry

if TYPE_CHECKING:
    from senolab.engine.config import ExecutorConfig, StudyConfig
    from senolab.runners.study import StudyUnit


@dataclass
class Task:
    """One run of a study, and the run whose trained model it adapts (it runs after that one)."""

    unit: "StudyUnit"
    base: "StudyUnit | None" = None

    @property
    def name(self) -> str:
        return self.unit.name

    def in_driver(self) -> bool:
        """Federated training runs its own Ray simulation: never inside a Ray task."""
        return METHODS.get(self.unit.spec.name).federated

    def without_data(self) -> "Task":
        """The task to send to a worker; its data travels through the object store."""
        base = replace(self.base, data=None) if self.base is not None else None
        return Task(replace(self.unit, data=None), base)

    def with_data(self, data) -> "Task":
        base = replace(self.base, data=data) if self.base is not None else None
        return Task(replace(self.unit, data=data), base)


@dataclass
class Failure:
    """A run that raised: the error in one line and the traceback (written to its error.json)."""

    error: str
    traceback: str
    host: str = field(default_factory=socket.gethostname)

    @classmethod
    def of(cls, err: BaseException) -> "Failure":
        return cls(f"{type(err).__name__}: {err}", "".join(traceback.format_exception(err)))

    @classmethod
    def of_base(cls, base: "StudyUnit") -> "Failure":
        return cls(f"the run it trains as ({base.name}) failed", "")


@dataclass
class StudyJob:
    """What every executor needs: the config, the study folder, the driver's working
    directory (relative data paths are read from there), whether to show progress, the
    trainer callbacks that log a unit's epochs live (driver only) and the work of one task."""

    config: "StudyConfig"
    study_dir: Path
    run_task: Callable[["StudyConfig", Task, bool, list], dict]
    live: Callable[["StudyUnit"], list] | None = None
    progress: bool = True
    cwd: str = field(default_factory=os.getcwd)

    def callbacks(self, unit: "StudyUnit") -> list:
        return self.live(unit) if self.live is not None else []

    def for_workers(self) -> "StudyJob":
        """The job as a worker gets it: no live MLflow callbacks (the driver logs), no bars."""
        return replace(self, live=None, progress=False)


class StudyFolderUnreachable(RuntimeError):
    """A Ray worker cannot see the study folder (it is not on storage every node shares)."""


class RunBoard:
    """The study's progress line: runs done, running, waiting and failed."""

    def __init__(self, total: int, done: int, show: bool):
        self.total, self.done, self.failed, self.running = total, done, 0, set()
        self.bar = tqdm(total=total, initial=done, desc="study runs", unit="run", disable=not show, leave=True)
        self._show()

    def started(self, name: str) -> None:
        if name not in self.running:
            self.running.add(name)
            self._show()

    def finished(self, name: str, failed: bool) -> None:
        self.running.discard(name)
        self.failed += failed
        self.done += not failed
        self.bar.update(1)
        self._show()

    def text(self) -> str:
        waiting = self.total - self.done - self.failed - len(self.running)
        return f"{self.done} done, {len(self.running)} running, {waiting} waiting, {self.failed} failed"

    def close(self) -> None:
        self.bar.close()

    def _show(self) -> None:
        self.bar.set_postfix_str(self.text())


Outcome = dict | Failure  # the run's done.json record, or why it failed
Executor = Callable[[StudyJob, list[Task], RunBoard], Iterator[tuple[Task, Outcome]]]
EXECUTORS: Registry[Executor] = Registry("study executor")


@contextmanager
def torch_threads(cpus: int | None):
    """``torch.set_num_threads(cpus)`` for the block (None: leave the process's default)."""
    before = torch.get_num_threads()
    if cpus is not None:
        torch.set_num_threads(cpus)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def attempt(job: StudyJob, task: Task, progress: bool, callbacks: list) -> Outcome:
    """Run one task with the declared threads; any error becomes its :class:`Failure`."""
    with torch_threads(job.config.executor.cpus):
        try:
            return job.run_task(job.config, task, progress, callbacks)
        except Exception as err:  # noqa: BLE001 - recorded with its traceback; the other runs go on
            return Failure.of(err)


@EXECUTORS.register("sequential")
def run_in_this_process(job: StudyJob, tasks: list[Task], board: RunBoard) -> Iterator[tuple[Task, Outcome]]:
    """Each task in turn, here; a task whose base run failed fails without running."""
    failed: set[str] = set()
    for task in tasks:
        if task.base is not None and task.base.name in failed:
            outcome = Failure.of_base(task.base)
        else:
            board.started(task.name)
            outcome = attempt(job, task, job.progress, job.callbacks(task.unit))
        if isinstance(outcome, Failure):
            failed.add(task.name)
        yield task, outcome


@EXECUTORS.register("ray")
def run_on_ray(job: StudyJob, tasks: list[Task], board: RunBoard) -> Iterator[tuple[Task, Outcome]]:
    """Each task a Ray task with the declared resources, then the driver's own tasks."""
    ray = require("ray")
    executor = job.config.executor
    here = here_of(tasks)
    with ray_session(executor):
        starts = ray.remote(num_cpus=0)(_Starts).remote()
        remote = ray.remote(_run_remote).options(num_cpus=executor.cpus or 1, num_gpus=executor.gpus, max_retries=0,
                                                 runtime_env=QUIET_WORKERS)
        for_workers = job.for_workers()
        data_refs, refs, pending = {}, {}, {}
        for task in tasks:
            if any(task.name == t.name for t in here):
                continue
            data = task.unit.data
            if id(data) not in data_refs:  # one copy per pair in the object store
                data_refs[id(data)] = ray.put(data)
            base_ref = refs.get(task.base.name) if task.base is not None else None
            refs[task.name] = remote.remote(for_workers, task.without_data(), data_refs[id(data)], base_ref, starts)
            pending[refs[task.name]] = task
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
            waiting = {task.name for task in pending.values()}
            for name in ray.get(starts.names.remote()):
                if name in waiting:
                    board.started(name)
            for ref in ready:
                yield pending.pop(ref), ray.get(ref)
    yield from run_in_this_process(job, here, board)


def here_of(tasks: list[Task]) -> list[Task]:
    """The tasks the driver runs itself: federated ones, and those that adapt their models."""
    here: dict[str, Task] = {}
    for task in tasks:  # a base is planned before the tasks that adapt it
        if task.in_driver() or (task.base is not None and task.base.name in here):
            here[task.name] = task
    return list(here.values())


# Workers draw no progress bars (an adaptation's own included): the driver's line says it all.
QUIET_WORKERS = {"env_vars": {"TQDM_DISABLE": "1"}}


class _Starts:
    """A Ray actor the workers tell when a run starts: the driver's 'running' count."""

    def __init__(self):
        self.started: list[str] = []

    def start(self, name: str) -> None:
        self.started.append(name)

    def names(self) -> list[str]:
        return list(self.started)


def _run_remote(job: StudyJob, task: Task, data, base_outcome, starts) -> Outcome:
    """One task in a Ray worker (``base_outcome``: the result of the run it trains as, if
    that ran in this study; Ray starts this task only once that is known)."""
    if isinstance(base_outcome, Failure):
        return Failure.of_base(task.base)
    starts.start.remote(task.name)
    try:
        enter_study(job)
    except StudyFolderUnreachable as err:
        return Failure.of(err)
    return attempt(job, task.with_data(data), job.progress, [])


def enter_study(job: StudyJob) -> None:
    """In a worker: check the study folder is there and read relative data paths from the
    driver's working directory, as the driver does."""
    if not (job.study_dir / "study.yaml").is_file():
        raise StudyFolderUnreachable(
            f"the Ray worker on {socket.gethostname()} cannot see the study folder {job.study_dir}: a study on a "
            "Ray cluster needs its folder (--out) on storage every node mounts at the same path (e.g. NFS)")
    if os.path.isdir(job.cwd):
        os.chdir(job.cwd)


@contextmanager
def ray_session(executor: "ExecutorConfig"):
    """Ray, connected: the cluster at ``executor.address``, or a local instance sized to
    this machine; left as found (a Ray the caller started stays up)."""
    ray = require("ray")
    if ray.is_initialized():
        yield ray
        return
    if executor.address:
        ray.init(address=executor.address, log_to_driver=True)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()
