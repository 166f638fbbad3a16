"""The `dial` setting: a peer's advertised address -> the address a node dials instead (NAT, sidecars, the
harness's Toxiproxy links). The scenario tests with `links="toxiproxy"` show it carries every link; these
check the setting itself, from flag, environment and jobgrid.toml, and that bad values get one clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobgrid import config
from jobgrid.errors import ConfigError
from jobgrid.node.peers import Peers
from jobgrid.settings import parse_dial


def test_parse_dial_pairs_and_ipv6():
    assert parse_dial("10.0.0.5:8000=127.0.0.1:21001, [::1]:8001=[::1]:21002") == (
        (("10.0.0.5", 8000), ("127.0.0.1", 21001)), (("::1", 8001), ("::1", 21002)))
    assert parse_dial("") == ()


@pytest.mark.parametrize("bad", ["10.0.0.5:8000", "10.0.0.5=127.0.0.1:1", "a:1=b:0", "a:1=b:x"])
def test_parse_dial_rejects_malformed_entries(bad):
    with pytest.raises(ConfigError, match="dial"):
        parse_dial(bad)


def test_peers_dial_the_mapped_address_but_keep_the_advertised_one():
    p = Peers(token=None, dial={("10.0.0.5", 8000): ("127.0.0.1", 21001)})
    assert p.base("10.0.0.5", 8000) == "http://127.0.0.1:21001"
    assert p.base("10.0.0.6", 8000) == "http://10.0.0.6:8000"


def test_toml_table_and_list_become_the_env_value(tmp_path):
    f = tmp_path / "jobgrid.toml"
    f.write_text('[server]\ndial = { "10.0.0.5:8000" = "127.0.0.1:21001" }\n')
    env: dict[str, str] = {}
    config.apply(config.load(f), env)
    assert parse_dial(env["JOBGRID_DIAL"]) == ((("10.0.0.5", 8000), ("127.0.0.1", 21001)),)
    f.write_text('dial = ["10.0.0.5:8000=127.0.0.1:21001", "10.0.0.6:8000=127.0.0.1:21002"]\n')
    env = {}
    config.apply(config.load(f), env)
    assert len(parse_dial(env["JOBGRID_DIAL"])) == 2


def test_a_bad_dial_flag_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jobgrid.cli", "server", "18999", "--dial", "nonsense",
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "dial entry 'nonsense'" in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


def test_every_option_has_a_help_line_with_its_default():
    """`jobgrid ... --help` explains every option (issue 13): no bare option lines."""
    from jobgrid.cli import build_parser
    p = build_parser()
    for name, sub in p._subparsers._group_actions[0].choices.items():  # noqa: SLF001
        for action in sub._actions:  # noqa: SLF001
            if action.option_strings and action.dest != "help":
                assert action.help, f"jobgrid {name} {action.option_strings[0]} has no help line"
