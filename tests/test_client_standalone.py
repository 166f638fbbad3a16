"""The client library stands on its own: `import jobgrid` and using its clients loads no node code and
no server code (`aiohttp.web`), before and while it talks to a real node; a job process does not load
the client. Each check runs in a fresh interpreter, so nothing this test process imported counts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# the jobgrid modules a client may load: the shared messages, errors, encodings, group commit and frames
CLIENT_SIDE = {"jobgrid", "jobgrid.errors", "jobgrid.protocol", "jobgrid.codec", "jobgrid.logs", "jobgrid.batching",
               "jobgrid.framing", "jobgrid.client", "jobgrid.client.specs", "jobgrid.client.transport",
               "jobgrid.client.results", "jobgrid.client.aio", "jobgrid.client.blocking", "jobgrid.executor",
               "jobgrid.examples"}
SERVER_ONLY = ("aiohttp.web", "prometheus_client", "platformdirs", "sqlite3")

REPORT = """
import json, sys
print(json.dumps(sorted(m for m in sys.modules if m.startswith("jobgrid") or m.split(".")[0] in
                        ("aiohttp", "prometheus_client", "platformdirs", "sqlite3"))))
"""


def loaded(code: str, timeout: float = 120) -> list[str]:
    """The jobgrid (and server-library) modules a fresh interpreter holds after running `code`."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + REPORT], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def server_side(mods: list[str]) -> list[str]:
    return [m for m in mods if (m.startswith("jobgrid") and m not in CLIENT_SIDE)
            or any(m == s or m.startswith(s + ".") for s in SERVER_ONLY)]


def test_import_jobgrid_and_its_clients_loads_no_node_or_server_code():
    mods = loaded("""
        import jobgrid
        jobgrid.Client, jobgrid.AsyncClient, jobgrid.GridExecutor, jobgrid.JobFuture, jobgrid.ScriptOutput
        from jobgrid.client import build_spec, decode_value, pickle_spec, script_spec, token_from_env
    """)
    assert "jobgrid.client.aio" in mods and "jobgrid.executor" in mods  # the check saw the client loaded
    assert server_side(mods) == [], server_side(mods)
    assert not any(m.startswith("jobgrid.node") or m == "aiohttp.web" for m in mods)


def test_a_client_submitting_to_a_real_node_loads_no_node_or_server_code(cluster_factory, tmp_path):
    cl = cluster_factory(replicas=1, runners=1)
    (n,) = cl.up(1, timeout=60)
    script = tmp_path / "hello.py"
    script.write_text("import sys; print('hello', *sys.argv[1:])")
    mods = loaded(f"""
        import asyncio
        import jobgrid
        from jobgrid.examples import add, square

        with jobgrid.Client({n.url!r}, token={cl.token!r}) as grid:
            assert grid.submit(square, 7).result(60) == 49
            assert grid.map(square, range(5), timeout=60) == [0, 1, 4, 9, 16]
            out = grid.submit_script({str(script)!r}, ["world"]).result(60)
            assert out.stdout == "hello world\\n", out
            assert grid.submit_call("jobgrid.examples:add", 2, 3).result(60) == 5
            assert grid.servers().serving
            try:
                grid.submit(divmod, 1, 0).result(60)
            except ZeroDivisionError:
                pass
            else:
                raise AssertionError("the job's exception was not re-raised")
        with jobgrid.GridExecutor({n.url!r}, token={cl.token!r}) as ex:
            assert list(ex.map(add, [1, 2], [3, 4])) == [4, 6]

        async def go():
            async with jobgrid.AsyncClient({n.url!r}, token={cl.token!r}) as c:
                assert await (await c.submit(square, 3)) == 9
                assert (await c.wait_result((await c.submit(square, 4)).job_id, timeout=60)).state == "succeeded"
        asyncio.run(go())
    """)
    assert "jobgrid.framing" in mods and "jobgrid.client.transport" in mods
    assert server_side(mods) == [], server_side(mods)


def test_a_job_process_does_not_load_the_client():
    """The worker (`python -m jobgrid.worker`) and a job that imports `jobgrid.examples` pay for neither the
    client nor aiohttp: `import jobgrid` loads only the error tree until a client name is used."""
    mods = loaded("import jobgrid.worker, jobgrid.examples")
    assert not [m for m in mods if m.startswith("jobgrid.client") or m.startswith("aiohttp")], mods
