"""ratos-fleet's command line: range-checked flags, percentages, --version, help with exit codes."""

from __future__ import annotations

import argparse
import builtins
from typing import Any

import pytest

from pyinfra_ratos.fleet import cli


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--batch-size", "-3"), ("--parallel", "0"),
                                        ("--max-failed", "120"), ("--max-failed", "-1"), ("--max-failed", "lots")])
def test_out_of_range_flags_are_refused_with_exit_2(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        parse("update", "inv.py", flag, value)
    assert stop.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("text,share", [("20", 0.2), ("20%", 0.2), ("0", 0.0), ("100", 1.0), ("1", 0.01),
                                        ("0.2", 0.2), ("0.5%", 0.005)])
def test_max_failed_is_a_percentage_and_the_older_share_form_still_reads(text: str, share: float) -> None:
    assert parse("update", "inv.py", "--max-failed", text).max_failed == pytest.approx(share)


def test_version_and_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        parse("--version")
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("ratos-fleet ")
    assert parse("-v", "plan", "inv.py").verbose == 1
    assert parse("plan", "inv.py", "-vv").verbose == 2
    assert parse("plan", "inv.py").verbose == 0


@pytest.mark.parametrize("command", ["status", "plan", "update"])
def test_each_command_has_a_description_and_its_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(command, "--help")
    text = capsys.readouterr().out
    assert "exit codes:" in text and "130" in text and "3    no failure" in text
    assert "converged" in text


def test_plan_previews_attended_flash_and_prints_json_and_diffs() -> None:
    args = parse("plan", "inv.py", "--attended-flash", "--json", "--diff", "--fail-on-busy")
    assert (args.attended_flash, args.json, args.diff, args.fail_on_busy) == (True, True, True, True)
    assert parse("update", "inv.py", "--attended-flash", "--yes").yes


def test_demo_without_the_sim_extra_names_it_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    real_import = builtins.__import__

    def no_kconfiglib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "kconfiglib":
            raise ModuleNotFoundError("No module named 'kconfiglib'", name="kconfiglib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kconfiglib)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ratos-fleet: the virtual farm needs the 'sim' extra (kconfiglib is missing): "
                   "pip install 'pyinfra-ratos[sim]'"]
