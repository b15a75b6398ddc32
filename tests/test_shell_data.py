"""Every value that reaches a shell is data, never script text (issue 14, design rule 8).

Two checks: the command builders of operations/ interpolate into shell text only quoted values,
names of our own constants and numbers (read from the sources); and each builder, given hostile
values in every string it takes, is run for real under ``sh`` (its tools stubbed) without running
a single one of them.
"""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.operations import backup, firmware, klipper, printer
from pyinfra_ratos.operations.klipper import CheckoutPlan
from pyinfra_ratos.operations.printer import FileWrite

ROOT = Path(__file__).resolve().parents[1]
# each, if the shell ever ran it as code, creates the file named by $PWN
HOSTILE = [
    "$(touch $PWN)", "`touch $PWN`", "x;touch $PWN;", "x\ntouch $PWN\n", "x'; touch $PWN; '",
    'x"; touch $PWN; "', "x$(touch${IFS}$PWN)", "x&&touch $PWN", "x|touch $PWN", "$(touch\t$PWN)",
]
SAFE_CALLS = {"quote", "shell_path", "int", "len", "QuoteString"}
# what builders may put into shell text unquoted: our constants, validated hex commits, numbers,
# and shell variables that the same script assigned from quoted values
SAFE_EXPRESSIONS = {
    "ARTIFACTS_DIR", "BUILT_PREFIX", "REMOTE_BUNDLE_DIR", "ORIGIN_LOG", "commit[:12]", "p", "keep", "check",
    "backups + 1", "directory.rstrip('/')", "restart_marker(service)",
}


def _quoted_args(node: ast.AST) -> set[int]:
    """ids of the f-strings passed straight to a quoting call (their whole value is quoted)."""
    found = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call) and (getattr(call.func, "attr", None) or getattr(call.func, "id", None)) \
                in SAFE_CALLS:
            found.update(id(arg) for arg in call.args if isinstance(arg, ast.JoinedStr))
    return found


def test_command_builders_interpolate_only_quoted_values() -> None:
    unsafe = []
    for path in sorted((ROOT / "operations").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            returns = ast.unparse(fn.returns) if fn.returns else ""
            if not (fn.name.endswith(("_script", "_command")) or "StringCommand" in returns):
                continue
            quoted = _quoted_args(fn)
            for string in ast.walk(fn):
                if not isinstance(string, ast.JoinedStr) or id(string) in quoted:
                    continue
                for part in string.values:
                    if not isinstance(part, ast.FormattedValue):
                        continue
                    value = part.value
                    name = getattr(value.func, "attr", None) or getattr(value.func, "id", None) \
                        if isinstance(value, ast.Call) else None
                    if name in SAFE_CALLS or ast.unparse(value) in SAFE_EXPRESSIONS:
                        continue
                    unsafe.append(f"{path.name}:{part.lineno} {fn.name}: {ast.unparse(value)}")
    assert unsafe == []


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    """A HOME and a PATH whose git, sudo, make, systemctl... only record that they ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("git", "sudo", "make", "systemctl", "curl", "timeout", "python3", "dfu-util", "chown"):
        stub = bin_dir / tool
        stub.write_text('#!/bin/sh\nprintf "%s\\n" "$0 $*" >> "$HOME/ran"\nexit 0\n')
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    home = tmp_path / "home"
    (home / "printer_data/config").mkdir(parents=True)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "PWN": str(tmp_path / "PWNED"),
            "LC_ALL": "C"}


def run(command: Any, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    text = command if isinstance(command, str) else command.get_raw_value()
    return subprocess.run(["sh", "-c", text], env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=30)


def builders(value: str) -> list[tuple[str, Any]]:
    plan = CheckoutPlan("checkout", "reason", path=f"/tmp/k{value}", current="a" * 40, create=True, online=True,
                        remote=f"https://example.invalid/{value}")
    write = FileWrite(name=f"p{value}.cfg", text=f"[x]\n# {value}\n", old_text="", old_sha256=f"{value}",
                      old_size=1, reason=value)
    return [
        ("klipper.prepare_script", klipper.prepare_script(plan, "b" * 40, 5)),
        ("klipper.dirty_command", klipper.dirty_command(f"/tmp/k{value}")),
        ("klipper._fail", klipper._fail(value)),
        ("firmware.fail", firmware.fail(value)),
        ("firmware.pi_build_script", firmware.pi_build_script(f"CONFIG_X={value}", f"~/k{value}", False, "c" * 40)),
        ("firmware.agent_command", firmware.agent_command({"moonraker": value, "restart": value})),
        ("printer.fail_command", printer.fail_command(value)),
        ("printer.install_command", printer.install_command(f"~/printer_data/c{value}", write, f".t{value}", 5)),
        ("printer.restart_command", printer.restart_command(f"~/c{value}", "klipper", value)),
        ("printer.mark_pending_command", printer.mark_pending_command(f"~/c{value}", "klipper")),
        ("backup._fail", backup._fail(value)),
        ("backup.restore_script", backup.restore_script(f"~/c{value}", f"t{value}.tar", {f"n{value}": "0" * 64},
                                                        value)),
    ]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_data_in_every_command(sandbox: dict[str, str], value: str) -> None:
    for name, command in builders(value):
        done = run(command, sandbox)
        assert not os.path.exists(sandbox["PWN"]), f"{name} ran the value {value!r} as code: {done.stderr}"


def test_the_agent_gets_its_plan_as_one_intact_argument(sandbox: dict[str, str]) -> None:
    value = HOSTILE[0] + HOSTILE[5]
    run(firmware.agent_command({"moonraker": value}), sandbox)
    ran = Path(sandbox["HOME"], "ran").read_text()
    assert json.dumps(value)[1:-1] in ran and not os.path.exists(sandbox["PWN"])  # as JSON, byte for byte


def test_a_symlinked_printer_cfg_is_refused_never_replaced_by_a_file(sandbox: dict[str, str], tmp_path: Path) -> None:
    import hashlib

    config = Path(sandbox["HOME"]) / "printer_data/config"
    real = tmp_path / "git-managed-printer.cfg"
    real.write_text("[include RatOS.cfg]\n# mine\n")
    (config / "printer.cfg").symlink_to(real)
    new_text = "[include RatOS.cfg]\n# theirs\n"
    (config / ".printer.cfg.tmp").write_text(new_text)
    write = FileWrite(name="printer.cfg", text=new_text, old_text=real.read_text(),
                      old_sha256=hashlib.sha256(real.read_bytes()).hexdigest(), old_size=real.stat().st_size,
                      reason="adopted")
    done = run(printer.install_command("~/printer_data/config", write, ".printer.cfg.tmp", 5), sandbox)
    assert done.returncode == 1 and "is a symbolic link to" in done.stderr
    assert (config / "printer.cfg").is_symlink() and real.read_text() == "[include RatOS.cfg]\n# mine\n"
    assert not (config / ".printer.cfg.tmp").exists()  # the upload is cleaned away
