"""deploys/printer_config.py on the virtual farm: the user's bytes survive, writes are atomic,
faults leave the old file, a printing Pi is never restarted."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.sim import pihome, procs

from .conftest import VENV_BIN, RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "printer-config.toml"
DEPLOY = Path(__file__).resolve().parents[2] / "deploys" / "printer_config.py"
OCTOPUS = "btt-octopus-pro-h723-11"
USER_MACRO = "[gcode_macro OWNER_PURGE]\ngcode:\n    G1 X5 Y5 F6000\n"
COMMIT = "0d67d9c45e6e8d1a7c0f2b6f4a1e9d3c5b7a8f90"

DATA: dict[str, dict[str, Any]] = {
    "pc-regen": {"printer_model": "v-core-3", "printer_size": 300, "klipper_commit": COMMIT,
                 "boards": [{"board": OCTOPUS}, {"board": "btt-ebb42-12"}], "stepper_current": {"x": 1.6}},
    "pc-printing": {"printer_model": "v-minion", "boards": [{"board": "btt-skr-mini-e3-30"}]},
    "pc-faults": {"printer_model": "v-core-4", "boards": [{"board": OCTOPUS}]},
}


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-printer-config") as running:
        yield running


def deploy(farm: RunningFarm, name: str, data: dict[str, Any], *args: str, yes: bool = True,
           wait: bool = True) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    """Run the deploy on one Pi, with ``data`` as its printer data (merged over the farm's)."""
    inventory = farm.state / f"printers-{name}.py"
    inventory.write_text(
        "_farm = {}\n"
        f"exec(open({str(farm.inventory)!r}).read(), _farm)\n"
        f"_data = {json.dumps(data)!r}\n"
        "import json as _json\n"
        f"printers = [(n, {{**d, **_json.loads(_data)}}) for n, d in _farm['pis'] if n == {name!r}]\n")
    argv = [str(VENV_BIN / "pyinfra"), *(["-y"] if yes else []), str(inventory), str(DEPLOY), *args]
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def config_dir(farm: RunningFarm, name: str) -> Path:
    return farm.state / "pis" / name / "home" / "pi" / "printer_data" / "config"


def read(farm: RunningFarm, name: str, file: str) -> str:
    return (config_dir(farm, name) / file).read_text()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def klippy_log(farm: RunningFarm, name: str) -> str:
    return (farm.state / "pis" / name / "home" / "pi" / "printer_data" / "logs" / "klippy.log").read_text()


def ssh_commands(farm: RunningFarm, name: str) -> int:
    return (farm.upper(name) / "var" / "log" / "ratos-sim" / "sshd.log").read_text().count("Starting session: command")


def assert_user_bytes_intact(farm: RunningFarm, name: str) -> None:
    printer_cfg = read(farm, name, "printer.cfg")
    assert printer_cfg.endswith("\n" + USER_MACRO + pihome.save_config_block(name))
    assert printer_cfg.count(USER_MACRO) == 1


def test_first_deploy_adopts_printer_cfg_restarts_once_and_a_rerun_is_a_no_op(farm: RunningFarm) -> None:
    before = klippy_log(farm, "pc-regen").count("Starting Klippy")
    first = deploy(farm, "pc-regen", DATA["pc-regen"])
    assert first.returncode == 0, first.stdout
    generated = read(farm, "pc-regen", "RatOS.cfg")
    assert "[include RatOS/printers/v-core-3/v-core-3.cfg]" in generated
    assert f"[mcu]\nserial: /dev/serial/by-id/usb-Klipper_stm32h723xx_{OCTOPUS}-if00\n" in generated
    printer_cfg = read(farm, "pc-regen", "printer.cfg")
    assert "\n[include RatOS.cfg]\n" in printer_cfg and "\n#[mcu]\n" in printer_cfg
    assert_user_bytes_intact(farm, "pc-regen")
    assert f"pinned_commit: {COMMIT}\n" in read(farm, "pc-regen", "moonraker.conf")
    assert klippy_log(farm, "pc-regen").count("Starting Klippy") == before + 1

    shas = {f.name: sha(f) for f in config_dir(farm, "pc-regen").iterdir() if f.is_file()}
    commands = ssh_commands(farm, "pc-regen")
    again = deploy(farm, "pc-regen", DATA["pc-regen"])
    assert again.returncode == 0 and "Success" not in again.stdout.split("--> Results")[0], again.stdout
    assert {f.name: sha(f) for f in config_dir(farm, "pc-regen").iterdir() if f.is_file()} == shas
    # facts only: boards, the config files, moonraker.conf
    assert ssh_commands(farm, "pc-regen") - commands == 3
    assert klippy_log(farm, "pc-regen").count("Starting Klippy") == before + 1


def test_dry_run_shows_the_diff_and_changes_nothing(farm: RunningFarm) -> None:
    deploy(farm, "pc-regen", DATA["pc-regen"])
    shas = {f.name: sha(f) for f in config_dir(farm, "pc-regen").iterdir() if f.is_file()}
    log = klippy_log(farm, "pc-regen")
    dry = deploy(farm, "pc-regen", {**DATA["pc-regen"], "printer_size": 400}, "--dry", yes=False)
    assert dry.returncode == 0, dry.stdout
    assert "--- a/RatOS.cfg" in dry.stdout and "-position_max: 300" in dry.stdout and "+position_max: 400" in dry.stdout
    assert {f.name: sha(f) for f in config_dir(farm, "pc-regen").iterdir() if f.is_file()} == shas
    assert klippy_log(farm, "pc-regen") == log


def test_user_bytes_survive_regeneration_board_change_and_model_change(farm: RunningFarm) -> None:
    deploy(farm, "pc-regen", DATA["pc-regen"])
    printer_cfg = read(farm, "pc-regen", "printer.cfg")
    regeneration = {**DATA["pc-regen"], "printer_size": 500, "stepper_current": {"x": 1.2, "z": 1.0}}
    board_change = {**regeneration, "boards": [{"board": "btt-manta-m8p-20"}, {"board": "btt-ebb42-12"}]}
    steps = {"regeneration": regeneration, "board change": board_change,
             "model change": {**board_change, "printer_model": "v-core-4", "printer_size": 400}}
    for step, data in steps.items():
        result = deploy(farm, "pc-regen", data)
        assert result.returncode == 0, f"{step}: {result.stdout}"
        assert read(farm, "pc-regen", "printer.cfg") == printer_cfg, step
    generated = read(farm, "pc-regen", "RatOS.cfg")
    assert "[include RatOS/printers/v-core-4/v-core-4.cfg]" in generated
    assert "[include RatOS/boards/btt-manta-m8p-20/config.cfg]" in generated
    assert "usb-Klipper_stm32h723xx_btt-manta" not in generated and "serial: /dev/serial/by-id/usb-Klipper_" in generated

    # regenerating the user file itself: only the SAVE_CONFIG block is carried, the old file is backed up
    regen = deploy(farm, "pc-regen", {**steps["model change"], "printer_user_config": "regenerate"})
    assert regen.returncode == 0, regen.stdout
    regenerated = read(farm, "pc-regen", "printer.cfg")
    assert regenerated.startswith("[include RatOS.cfg]\n")
    assert regenerated.endswith("\n\n" + pihome.save_config_block("pc-regen"))
    backups = sorted(config_dir(farm, "pc-regen").glob("printer.cfg.*.bak"))
    assert backups[-1].read_text() == printer_cfg
    again = deploy(farm, "pc-regen", {**steps["model change"], "printer_user_config": "regenerate"})
    assert read(farm, "pc-regen", "printer.cfg") == regenerated and "Success" not in again.stdout.split("--> Results")[0]


def test_backups_keep_the_replaced_files_and_are_pruned_to_n(farm: RunningFarm) -> None:
    sizes = [200, 300, 400, 500]
    texts = []
    for size in sizes:
        result = deploy(farm, "pc-regen", {**DATA["pc-regen"], "printer_size": size, "printer_backups": 2})
        assert result.returncode == 0, result.stdout
        texts.append(read(farm, "pc-regen", "RatOS.cfg"))
    backups = sorted(config_dir(farm, "pc-regen").glob("RatOS.cfg.*.bak"))
    assert [b.read_text() for b in backups] == texts[1:3]
    stat = (config_dir(farm, "pc-regen") / "RatOS.cfg").stat()
    assert (stat.st_mode & 0o777, stat.st_uid) == (0o644, (config_dir(farm, "pc-regen") / "printer.cfg").stat().st_uid)


def test_a_missing_include_target_fails_the_host_naming_file_and_line(farm: RunningFarm) -> None:
    shas = {f.name: sha(f) for f in config_dir(farm, "pc-faults").iterdir() if f.is_file()}
    result = deploy(farm, "pc-faults", {**DATA["pc-faults"], "hotend": "no-such-hotend"})
    assert result.returncode != 0
    assert "pc-faults: invalid configuration, nothing was written" in result.stdout
    assert "RatOS.cfg (from RatOS.cfg.j2) line" in result.stdout
    assert "[include RatOS/hotends/no-such-hotend.cfg]: no such file on the Pi" in result.stdout
    assert {f.name: sha(f) for f in config_dir(farm, "pc-faults").iterdir() if f.is_file()} == shas


def test_a_newline_in_inventory_data_is_rejected_before_anything_is_written(farm: RunningFarm) -> None:
    shas = {f.name: sha(f) for f in config_dir(farm, "pc-faults").iterdir() if f.is_file()}
    commands = ssh_commands(farm, "pc-faults")
    bad = {**DATA["pc-faults"], "boards": [{"board": OCTOPUS, "serial": "/dev/ttyACM0\n[mcu evil]"}]}
    result = deploy(farm, "pc-faults", bad)
    assert result.returncode != 0
    assert "pc-faults: invalid printer data in the inventory" in result.stdout
    assert "boards[0].serial" in result.stdout and "line break" in result.stdout and "Fix:" in result.stdout
    assert {f.name: sha(f) for f in config_dir(farm, "pc-faults").iterdir() if f.is_file()} == shas
    assert ssh_commands(farm, "pc-faults") - commands == 1  # the failing report itself, no fact, no write


def test_disk_full_keeps_the_old_file_and_fails_that_pi_with_a_clear_message(farm: RunningFarm) -> None:
    assert deploy(farm, "pc-faults", DATA["pc-faults"]).returncode == 0
    cfg = "/home/pi/printer_data/config"
    farm.ssh("pc-faults", f"rm -rf /tmp/cfg && cp -a {cfg} /tmp/cfg && "
                          f"sudo mount -t tmpfs -o size=1m,mode=755,uid=$(id -u),gid=$(id -g) tmpfs {cfg} && "
                          f"cp -a /tmp/cfg/. {cfg}/ && (dd if=/dev/zero of={cfg}/.filler bs=1k count=2048 2>/dev/null; true)")
    try:
        before = farm.ssh("pc-faults", f"sha256sum {cfg}/RatOS.cfg {cfg}/printer.cfg").stdout
        result = deploy(farm, "pc-faults", {**DATA["pc-faults"], "printer_size": 500})
        assert result.returncode != 0
        assert "pc-faults: disk full:" in result.stdout and "Nothing was written" in result.stdout
        assert farm.ssh("pc-faults", f"sha256sum {cfg}/RatOS.cfg {cfg}/printer.cfg").stdout == before
        assert farm.ssh("pc-faults", f"ls -A {cfg}").stdout.split() == sorted(
            [".filler", "RatOS", "RatOS.cfg", "moonraker.conf", "printer.cfg"] +
            [f.name for f in config_dir(farm, "pc-faults").glob("*.bak")])
    finally:
        farm.ssh("pc-faults", f"sudo umount {cfg}")
    assert deploy(farm, "pc-faults", {**DATA["pc-faults"], "printer_size": 500}).returncode == 0


def _kill_sshd_sessions(farm: RunningFarm, name: str) -> int:
    """SIGKILL every sshd of one Pi: the processes in that Pi's PID namespace, found by namespace."""
    init = procs.pidfile_alive(str(farm.state / "pis" / name / "init.pid"))
    assert init is not None
    namespace = procs.pid_namespace(init)
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if procs.pid_namespace(pid) != namespace:
                continue
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("sshd"):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


def test_ssh_killed_mid_write_leaves_the_old_or_the_new_file(farm: RunningFarm, tmp_path: Path) -> None:
    assert deploy(farm, "pc-faults", DATA["pc-faults"]).returncode == 0
    target = config_dir(farm, "pc-faults") / "RatOS.cfg"
    old = target.read_bytes()
    # a user template that makes the generated file ~60 MB, so the upload takes a while
    (tmp_path / "RatOS.cfg.j2").write_text(
        '{% extends "builtin/RatOS.cfg.j2" %}{% block steppers %}\n'
        '{% for i in range(60000) %}{{ "# filler " ~ "x" * 1000 }}\n{% endfor %}{% endblock %}\n')
    data = {**DATA["pc-faults"], "printer_templates": str(tmp_path)}
    temp = config_dir(farm, "pc-faults") / ".RatOS.cfg.pyinfra-ratos.tmp"
    run = deploy(farm, "pc-faults", data, wait=False)
    assert isinstance(run, subprocess.Popen)
    partial = None
    while run.poll() is None:
        if temp.exists() and 0 < temp.stat().st_size < 60_000_000:
            partial = temp.stat().st_size
            assert _kill_sshd_sessions(farm, "pc-faults") > 0
            break
        time.sleep(0.002)
    output = run.communicate(timeout=300)[0]
    assert partial is not None, f"the upload was never seen in flight:\n{output}"
    assert run.returncode != 0, output
    assert target.read_bytes() == old  # killed during the upload: the rename never ran
    finished = deploy(farm, "pc-faults", data)
    assert finished.returncode == 0, finished.stdout
    new = target.read_bytes()
    assert new != old and len(new) > 60_000_000 and not temp.exists()
    assert deploy(farm, "pc-faults", DATA["pc-faults"]).returncode == 0
    assert target.read_bytes() == old


def _set_print_state(farm: RunningFarm, name: str, print_state: str) -> None:
    """The job ends, as the Pi sees it: edited inside the Pi (its overlay hides outside renames)."""
    script = ("from pyinfra_ratos.sim import pistate\n"
              "with pistate.update() as state:\n"
              f"    state['print_state'] = {print_state!r}\n")
    farm.ssh(name, f"sudo PYTHONPATH=/usr/local/lib/ratos-sim python3 -c {shlex.quote(script)}")


def test_a_printing_pi_gets_no_klipper_restart_until_it_is_idle(farm: RunningFarm) -> None:
    log = klippy_log(farm, "pc-printing")
    result = deploy(farm, "pc-printing", DATA["pc-printing"])
    assert result.returncode == 0, result.stdout
    assert "klipper restart pending: the printer is busy" in result.stdout
    assert "[include RatOS.cfg]" in read(farm, "pc-printing", "printer.cfg")  # written (when_busy=write)
    assert klippy_log(farm, "pc-printing") == log
    assert (config_dir(farm, "pc-printing") / ".pyinfra-ratos-restart-klipper").exists()

    generated = read(farm, "pc-printing", "RatOS.cfg")
    deferred = deploy(farm, "pc-printing", {**DATA["pc-printing"], "stepper_current": {"x": 1.1},
                                            "printer_when_busy": "defer"})
    assert deferred.returncode == 0 and "deferred: the printer is busy" in deferred.stdout
    assert read(farm, "pc-printing", "RatOS.cfg") == generated and klippy_log(farm, "pc-printing") == log

    _set_print_state(farm, "pc-printing", "standby")
    idle = deploy(farm, "pc-printing", DATA["pc-printing"])
    assert idle.returncode == 0, idle.stdout
    assert klippy_log(farm, "pc-printing").count("Starting Klippy") == log.count("Starting Klippy") + 1
    assert not (config_dir(farm, "pc-printing") / ".pyinfra-ratos-restart-klipper").exists()
