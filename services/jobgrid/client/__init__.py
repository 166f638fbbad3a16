"""The Python client library: submit jobs to a grid, get futures, read results.

    specs.py      a job as sent and got back: build and validate JobSpecs (pickle, script, call), decode_value
    transport.py  one request to the grid, failing over across given and learned nodes (streams, Retry-After)
    results.py    every wait for a result shares one long poll; results that came with an ack need none
    aio.py        AsyncClient: group-committed submissions, status, cancel, the server list
    blocking.py   Client (an AsyncClient on its own loop thread) and JobFuture (a concurrent.futures.Future)

It imports nothing of the node (`jobgrid.node`) and no server code (`aiohttp.web`): what it shares with
the node is the messages (`jobgrid.protocol`), the group commit (`jobgrid.batching`) and the stream's
frames (`jobgrid.framing`).
"""

from __future__ import annotations

from .aio import AsyncClient
from .blocking import Client, JobFuture
from .specs import ScriptOutput, build_spec, call_spec, decode_value, new_job_id, pickle_spec, script_spec
from .transport import token_from_env

__all__ = ["AsyncClient", "Client", "JobFuture", "ScriptOutput", "build_spec", "call_spec", "decode_value",
           "new_job_id", "pickle_spec", "script_spec", "token_from_env"]
