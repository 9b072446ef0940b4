"""Evaluations that run while the next model trains.

An evaluation has two parts: the model passes (forget, retain and test predictions, on the training
device) and the metrics computed from them on the CPU, where the MIA's SVC fit on 10,000 + 10,000
samples takes seconds (libsvm, one thread, which releases the GIL). With a GPU the second part can
overlap the next step's training: :class:`Evaluations` runs it in worker threads, and then
*finishes* each evaluation in the main thread, in the order they were submitted: it closes the
contexts handed over with it (an experiment method's staged run folder, committed only now, so the
folder is still written as a unit with its evaluation) and calls its ``then`` (the step line).

With ``workers=0`` an evaluation runs and finishes inside :meth:`Evaluations.submit`, as a plain
call would. A failed evaluation exits its contexts with its error (a staged folder keeps its
partial folder for resume, as when the evaluation fails inline) and the error is raised by the
:meth:`~Evaluations.collect` that finishes it; :meth:`~Evaluations.close` finishes every pending one
before returning, so a folder whose evaluation succeeded is committed whatever happens after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

__all__ = ["Evaluations", "default_workers", "done"]


def default_workers() -> int:
    """Worker threads for evaluations that overlap GPU training: one core is left to the main
    thread (which launches the GPU work), at most 4 (one fit per pending evaluation)."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def done(value) -> Future:
    """A future that already holds ``value``."""
    future: Future = Future()
    future.set_result(value)
    return future


@dataclasses.dataclass
class _Pending:
    future: Future
    contexts: contextlib.ExitStack
    then: Callable[[dict], None] | None


class Evaluations:
    """Evaluations computed by ``workers`` threads (0: in the caller's thread) and finished in the
    main thread in submission order (see the module docstring)."""

    def __init__(self, workers: int = 0) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0; got {workers}")
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="coun_fast-evaluation") if workers else None
        self._pending: list[_Pending] = []

    @property
    def background(self) -> bool:
        """Whether evaluations overlap what the main thread does next."""
        return self._pool is not None

    def submit(self, compute: Callable[[], dict], *, contexts: contextlib.ExitStack | None = None,
               then: Callable[[dict], None] | None = None) -> Future:
        """Run ``compute()`` (in a worker, or here with no workers); once it has returned, exit
        ``contexts`` and call ``then(row)`` in the main thread. Returns the future of ``compute()``'s
        result, which a later ``compute`` may wait on (workers take evaluations in submission
        order, so waiting on an earlier one cannot deadlock)."""
        if self._pool is not None:
            future = self._pool.submit(compute)
        else:
            future = Future()
            try:
                future.set_result(compute())
            except BaseException as error:  # finished (contexts exited with it) and raised below
                future.set_exception(error)
        self._pending.append(_Pending(future, contexts or contextlib.ExitStack(), then))
        self.collect(wait=self._pool is None)
        return future

    def collect(self, wait: bool = False) -> None:
        """Finish the pending evaluations, in submission order, that are done (all of them with
        ``wait``); raises the error of a failed one once it is finished."""
        while self._pending and (wait or self._pending[0].future.done()):
            item = self._pending.pop(0)
            try:
                row = item.future.result()
            except BaseException as error:
                if not item.contexts.__exit__(type(error), error, error.__traceback__):
                    raise
                continue
            item.contexts.close()
            if item.then is not None:
                item.then(row)

    def close(self) -> None:
        """Finish every pending evaluation, then stop the workers. The first failure is raised
        after all are finished."""
        first: BaseException | None = None
        while self._pending:
            try:
                self.collect(wait=True)
            except BaseException as error:
                first = first or error
        if self._pool is not None:
            self._pool.shutdown()
        if first is not None:
            raise first

    def __enter__(self) -> "Evaluations":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self.close()
        except BaseException:
            if error is None:
                raise  # the body's own error, when there is one, is the one that propagates
