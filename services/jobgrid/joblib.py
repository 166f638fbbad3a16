"""A joblib backend: `with joblib.parallel_config(backend="jobgrid", address=URL): Parallel(...)(...)`.

Importing this module registers the backend "jobgrid". Each joblib batch becomes one grid job
(auto-batched like loky, so tiny tasks are grouped); results come back through a `Client`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from joblib import register_parallel_backend
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

from .client import Client

DEFAULT_N_JOBS = 8


class JobgridBackend(AutoBatchingMixin, ParallelBackendBase):
    """Runs joblib batches as grid jobs. `address` (one URL or a list), `token`, and job options
    (priority, timeout, max_retries, ...) come from `parallel_config(backend="jobgrid", ...)`."""

    supports_retrieve_callback = True
    supports_timeout = True
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = DEFAULT_N_JOBS

    def __init__(self, address: str | Sequence[str] = "http://127.0.0.1:8000", token: str | None = None,
                 nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 **job_options: Any) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.address = address
        self.token = token
        self.job_options = job_options
        self.client: Client | None = None
        self.futures: set = set()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            return DEFAULT_N_JOBS
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None, require: Any = None,
                  **_ignored: Any) -> int:
        if require == "sharedmem":
            raise ValueError("the jobgrid backend runs jobs in other processes: no shared memory")
        self.parallel = parallel
        if self.client is None:
            self.client = Client(self.address, token=self.token)
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Any = None) -> Any:
        assert self.client is not None, "configure() first"
        fut = self.client.submit_job(func, (), {}, **self.job_options)
        self.futures.add(fut)
        fut.add_done_callback(self.futures.discard)
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    def retrieve_result_callback(self, future: Any) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        for f in list(self.futures):
            f.cancel()
        self.futures.clear()

    def terminate(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        from joblib._parallel_backends import SequentialBackend
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


register_parallel_backend("jobgrid", JobgridBackend)
