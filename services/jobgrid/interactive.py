"""`jobgrid client PORT`: the seed's interactive client. Each line is one of the client's own commands
(`help` lists them), a script path with its arguments, or a Python expression evaluated on the grid.

`parse` decides what a line is (pure, unit-tested); `run` carries it out with a blocking `Client`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .errors import ConfigError, JobgridError

if TYPE_CHECKING:
    from .client import Client

HELP = """\
commands:
  path/to/script.py [ARGS...]   run a script on the grid (as __main__, with ARGS) and show its result
  EXPRESSION                    evaluate a Python expression on the grid and show its value, e.g. 6 * 7
  result JOB_ID                 a job's result, stdout and stderr (waiting for it)
  cancel JOB_ID [JOB_ID...]     cancel jobs that have not finished
  servers                       the grid's server list
  help                          this list
  quit                          leave (so does exit, or the end of the input: Ctrl-D)"""

Action = Literal["help", "quit", "servers", "result", "cancel", "script", "expression"]
_WORDS: dict[str, Action] = {"help": "help", "?": "help", "quit": "quit", "exit": "quit", "quit()": "quit",
                             "exit()": "quit", "servers": "servers", "result": "result", "cancel": "cancel"}


@dataclass(frozen=True)
class Line:
    """What one input line asks for."""

    action: Action
    args: tuple[str, ...] = ()


def parse(line: str) -> Line | None:
    """The line's meaning (None for a blank line); a ConfigError says what is wrong with it."""
    line = line.strip()
    if not line:
        return None
    word, *rest = line.split(maxsplit=1)
    action = _WORDS.get(word)
    if action is not None:
        args = tuple(rest[0].split()) if rest else ()
        if action in ("help", "quit", "servers") and args:
            raise ConfigError(f"{word} takes no arguments (type help for the commands)")
        if action == "result" and len(args) != 1:
            raise ConfigError("usage: result JOB_ID")
        if action == "cancel" and not args:
            raise ConfigError("usage: cancel JOB_ID [JOB_ID...]")
        return Line(action, args)
    try:
        parts = shlex.split(line)
    except ValueError:  # unbalanced quotes: not a command line, maybe an expression
        parts = []
    if parts and parts[0].endswith(".py"):
        return Line("script", tuple(parts))
    try:
        compile(line, "<expression>", "eval")
    except SyntaxError as e:
        raise ConfigError(f"not a script path or a Python expression: {e.msg} (type help for the commands)") from None
    return Line("expression", (line,))


def run(client: Client, where: str, timeout: float) -> int:
    """Read lines until quit or the end of the input; every error is one red line and the session goes on."""
    from .cli import err, out, print_result, print_servers

    out.print(f"jobgrid client for {where}. Type a script path with its arguments or a Python expression; "
              "'help' for the commands, 'quit' to leave.")
    while True:
        try:
            raw = input("jobgrid> ")
        except EOFError:
            out.print()  # end the prompt's line
            return 0
        try:
            line = parse(raw)
            if line is None:
                continue
            if line.action == "quit":
                return 0
            if line.action == "help":
                out.print(HELP, markup=False, highlight=False)
            elif line.action == "servers":
                print_servers(client.servers())
            elif line.action == "cancel":
                done = client.cancel(*line.args)
                for i in line.args:
                    out.print(f"{i}: {'cancelled' if i in done else 'not cancelled (already finished or unknown)'}")
            else:
                if line.action == "result":
                    job_id = line.args[0]
                else:
                    fut = (client.submit_script(Path(line.args[0]), line.args[1:]) if line.action == "script" else
                           client.submit_script(f"print(repr({line.args[0]}))", [], name="expression"))
                    job_id = fut.job_id
                    out.print(f"submitted {job_id}")
                try:
                    print_result(client.wait_result(job_id, timeout=timeout))
                except KeyboardInterrupt:
                    out.print(f"stopped waiting; the job goes on (result {job_id})")
        except JobgridError as e:
            err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
