"""The probe's reading of the config folder against the GNU tools it stands for.

ConfigBackupState and PrinterFiles were shell commands (find | sort | sha256sum, stat, df, base64);
the probe now reads the folder in its own Python process (27 processes fewer per Pi and update).
Their lines must stay what those tools print: the backup's tar still lists the folder with
``find``, and a digest that differed from it would download the folder on every run. The shell
commands below are the reference, run on the same folders.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pyinfra_ratos.facts import remote
from pyinfra_ratos.facts.config_state import ConfigState
from pyinfra_ratos.facts.printer_files import MAX_TEXT_BYTES, PrinterFiles
from pyinfra_ratos.facts.probe import SOURCE
from pyinfra_ratos.printer.klipper_config import SAVE_CONFIG_MARKER
from pyinfra_ratos.operations.backup import (
    EXCLUDED_DIRS,
    EXCLUDED_NAMES,
    MAX_FILE_CEILING_MB,
    MIB,
    RATOS_INITIAL_INCLUDE,
    ConfigBackupState,
)

FILES = ["printer.cfg", "RatOS.cfg", "moonraker.conf", ".pyinfra-ratos-restart-klipper", "link.cfg", "sub",
         "unreadable.cfg", "a b.cfg"]
READ = ["printer.cfg", "moonraker.conf", "big.cfg", "link.cfg", "absent.cfg"]
INCLUDES = ["RatOS/printers/v-core-3/v-core-3.cfg", "macros/x.cfg", "missing.cfg", "/etc/hostname", "sub"]


def _reference_backup(config_dir: str) -> list[str]:
    """What GNU find, sha256sum, stat and readlink print for the folder, as the probe's lines."""
    import re

    include = re.escape(f"[include {RATOS_INITIAL_INCLUDE}]")
    tests = " -o ".join([f"-path {shlex.quote('./' + d)}" for d in EXCLUDED_DIRS]
                        + [f"-name {shlex.quote(n)}" for n in EXCLUDED_NAMES])
    script = "\n".join([
        "printf 'machine_id\\t%s\\n' \"$(cat /etc/machine-id 2>/dev/null)\"",
        f"cd {shlex.quote(config_dir)} 2>/dev/null || {{ echo nodir; exit 0; }}",
        "printf 'dir\\t%s\\n' \"$(pwd)\"",
        "if [ -f printer.cfg ]; then echo printer_cfg",
        f"  grep -qxF -- {shlex.quote(SAVE_CONFIG_MARKER)} printer.cfg && echo save_config",
        f"  grep -Eq {shlex.quote('^' + include)} printer.cfg && echo initial",
        "fi",
        f"find . \\( {tests} \\) -prune -o \\( -type f -o -type l \\) -print0 | LC_ALL=C sort -z |",
        "while IFS= read -r -d '' f; do",
        "  if [ -L \"$f\" ]; then",
        "    printf 'link\\t[%s, %s]\\n' \"$(jq -Rn --arg v \"$f\" '$v')\" \"$(jq -Rn --arg v \"$(readlink -- \"$f\")\" '$v')\"",
        "  else",
        "    sha=$(sha256sum < \"$f\" 2>/dev/null | cut -c1-64) && [ -n \"$sha\" ] &&"
        " printf 'file\\t%s\\t%s\\t%s\\n' \"$sha\" \"$(stat -c %s -- \"$f\")\" \"$f\"",
        "  fi",
        "done",
        "exit 0",
    ])
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, errors="surrogateescape",
                          check=True).stdout.splitlines()


def _reference_files(config_dir: str) -> list[str]:
    def words(names: list[str]) -> str:
        return " ".join(shlex.quote(name) for name in names) or "''"

    script = "\n".join([
        f"cd {shlex.quote(config_dir)} 2>/dev/null || {{ echo nodir; exit 0; }}",
        "printf 'dir\\t%s\\t%s\\n' \"$(pwd)\" \"$(df -Pk . | awk 'NR==2 {print $4}')\"",
        f"for f in {words(FILES)}; do",
        "  [ -n \"$f\" ] || continue",
        "  if [ -f \"$f\" ]; then",
        "    printf 'file\\t%s\\t%s\\t%s\\n' \"$f\" \"$(stat -c '%a %U %G %s' -- \"$f\")\""
        " \"$(sha256sum < \"$f\" 2>/dev/null | cut -c1-64)\"",
        "  else printf 'missing\\t%s\\n' \"$f\"; fi",
        "done",
        f"for f in {words(READ)}; do",
        f"  if [ -f \"$f\" ] && [ \"$(stat -c %s -- \"$f\")\" -le {MAX_TEXT_BYTES} ]; then",
        "    printf 'text\\t%s\\t' \"$f\"; base64 -w0 < \"$f\"; echo",
        "  fi",
        "done",
        f"for f in {words(INCLUDES)}; do",
        "  if [ -e \"$f\" ]; then printf 'include\\t%s\\t1\\n' \"$f\"; else printf 'include\\t%s\\t0\\n' \"$f\"; fi",
        "done",
    ])
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()


def _probe(config_dir: str) -> tuple[list[str], list[str]]:
    backup = remote.probe_backup_state(config_dir, list(EXCLUDED_DIRS), list(EXCLUDED_NAMES), SAVE_CONFIG_MARKER,
                                       RATOS_INITIAL_INCLUDE, MAX_FILE_CEILING_MB * MIB)
    files = remote.probe_printer_files(config_dir, FILES, READ, INCLUDES, MAX_TEXT_BYTES)
    return backup, files


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "printer_data" / "config"
    for rel, text in {
        "printer.cfg": f"[include RatOS.cfg]\n[printer]\nkinematics: corexy\n{SAVE_CONFIG_MARKER}\n#*# x = 1",
        "RatOS.cfg": "[include RatOS/printers/v-core-3/v-core-3.cfg]\n",
        "moonraker.conf": "[server]\nhost: 0.0.0.0\r\n\xe9\n",
        "RatOS/printers/v-core-3/v-core-3.cfg": "# RatOS's own\n",
        "sub/RatOS/kept.cfg": "not the top-level RatOS: backed up\n",
        "macros/x.cfg": "[gcode_macro X]\n",
        "printer.cfg.20260101-000000-1.bak": "old\n",
        "dir.bak/inside.cfg": "pruned with its folder\n",
        ".pyinfra-ratos-restart-klipper": "",
        "a b.cfg": "spaces\n",
        "Zeta.cfg": "C order: upper case first\n",
        "_under.cfg": "after the capitals\n",
        "big.cfg": "#" * (MAX_TEXT_BYTES + 1),
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "link.cfg").symlink_to("macros/x.cfg")
    (root / "dangling.cfg").symlink_to("nowhere.cfg")
    (root / "linked-dir").symlink_to("macros")
    (root / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "fifo")
    (root / "unreadable.cfg").write_text("secret\n")
    (root / "unreadable.cfg").chmod(0o000)
    (root / "exec.sh").write_text("#!/bin/sh\n")
    (root / "exec.sh").chmod(0o4755)
    return root


def _free_space_apart(lines: list[str]) -> tuple[int, list[str]]:
    """The ``dir`` line's free KiB, and the lines with it left out: other writers on the machine
    change it between two readings."""
    path, free = lines[0].rsplit("\t", 1)
    return int(free), [path, *lines[1:]]


def test_the_probe_prints_what_find_sha256sum_stat_and_base64_print(folder: Path) -> None:
    backup, files = _probe(str(folder))
    assert backup == _reference_backup(str(folder))
    free, lines = _free_space_apart(files)
    reference_free, reference_lines = _free_space_apart(_reference_files(str(folder)))
    assert lines == reference_lines
    assert abs(free - reference_free) < 64 * 1024  # KiB, as df -Pk
    assert any(line.endswith("\t./sub/RatOS/kept.cfg") for line in backup)
    assert 'link\t["./link.cfg", "macros/x.cfg"]' in backup and 'link\t["./linked-dir", "macros"]' in backup
    assert not any("RatOS/printers" in line or ".bak" in line for line in backup)


def test_the_initial_ratos_printer_cfg_and_a_missing_folder(folder: Path, tmp_path: Path) -> None:
    (folder / "printer.cfg").write_text(f"[include {RATOS_INITIAL_INCLUDE}]\n")
    backup, _ = _probe(str(folder))
    assert backup == _reference_backup(str(folder))
    assert "initial" in backup and "save_config" not in backup
    backup, files = _probe(str(tmp_path / "absent"))
    assert backup[1:] == ["nodir"] and files == ["nodir"]
    assert _reference_backup(str(tmp_path / "absent")) == backup


def test_the_facts_run_the_shipped_probe_from_home(folder: Path, tmp_path: Path) -> None:
    """As over SSH: a ``~/`` path, the script from ``-c``, one JSON line; each fact's parser."""
    env = {**os.environ, "HOME": str(tmp_path)}
    query = {"files": ["printer.cfg"], "read": ["printer.cfg"], "includes": ["macros/x.cfg"]}

    def run(fact: object, **kwargs: object) -> object:
        command = fact.command(**kwargs).get_raw_value()  # type: ignore[attr-defined]
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert done.returncode == 0 and done.stderr == ""
        return fact.process(done.stdout.splitlines())  # type: ignore[attr-defined]

    state = run(ConfigState(), config_dir="~/printer_data/config", **query)
    assert state["backup"] == run(ConfigBackupState(), config_dir="~/printer_data/config")
    files = run(PrinterFiles(), config_dir="~/printer_data/config", **query)
    assert files.pop("free_bytes") > 0 and state["files"].pop("free_bytes") > 0  # other tests write meanwhile
    assert state["files"] == files
    assert state["backup"]["dir"] == str(folder) and state["backup"]["save_config"] is True
    assert state["files"]["files"]["printer.cfg"]["text"] == (folder / "printer.cfg").read_text()
    assert state["files"]["includes"] == {"macros/x.cfg": True}
    machine_id = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
    assert state["backup"]["machine_id"] == machine_id
    # no folder: the machine-id alone (the printer's identity is checked all the same)
    assert run(ConfigState(), config_dir="~/elsewhere", **query) == {"backup": {"machine_id": machine_id}, "files": {}}


def test_a_probe_that_cannot_run_reads_as_no_folder() -> None:
    assert ConfigState().process(["{}"]) == {"backup": {}, "files": {}}
    assert PrinterFiles().process([]) == {}
    assert ConfigBackupState().process(['{"backup": {"error": "OSError: boom"}}']) == {}
    done = subprocess.run([sys.executable, "-c", SOURCE, "config", '{"config_dir": "/", "backup": {}}'],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "KeyError" in done.stdout
