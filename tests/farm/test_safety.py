"""Never leave a printer worse than it was, on the virtual farm over real SSH (issue #13).

- the gate matrix: every entry point x every state that is not positively idle (printing,
  paused, Moonraker 503 or hanging under a print, klippy shut down, klipper.service starting, a
  board held for an attended flash): Klipper's main process is never restarted, ~/klipper never
  moves under it, no board is flashed, and the run says why;
- a preparation that fails (a Kconfig override that does not resolve) leaves everything as it was;
- each flash fault ends with klippy ready on a matching (host, firmware) pair, or with the exact
  thing to do, and a rerun without the fault converges;
- the controller killed mid-flash: the rerun keeps off the board until the orphaned agent is done.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.sim import farm as sim_farm

from .conftest import RunningFarm, start_farm

SCENARIO = Path(__file__).parent / "scenarios" / "safety-lab.toml"
DEPLOYS = Path(__file__).parents[2] / "deploys"
RATOS_FLEET = str(Path(sys.executable).parent / "ratos-fleet")
GATED = ["g-printing", "g-paused", "g-503", "g-hang", "g-shutdown", "g-activating", "g-held"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    state = tmp_path_factory.mktemp("farm-safety")
    running = start_farm(SCENARIO, state)
    inventory = state / "safety-inventory.py"
    inventory.write_text(
        f"exec(open({str(running.inventory)!r}).read())\n"
        "def _extra(name, data):\n"
        "    if name == 'f-corrupt-pyusb':\n"
        "        return {**data, 'flash_backend': 'pyusb'}\n"
        "    if name == 'p-badkconfig':  # a crystal the H723 build cannot take\n"
        "        return {**data, 'boards': [{**data['boards'][0], 'kconfig': {'STM32_CLOCK_REF_12M': 'y',\n"
        "                                                                  'STM32_CLOCK_REF_25M': 'n'}}]}\n"
        "    return data\n"
        "pis = [(name, _extra(name, data)) for name, data in pis]\n")
    running.safety_inventory = inventory  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        sim_farm.down(state)


def snapshot(lab: RunningFarm, name: str) -> dict[str, Any]:
    """What must not change on a gated printer: klipper's main process, ~/klipper's HEAD, USB writes."""
    show = lab.ssh(name, "systemctl show klipper -p MainPID -p ExecMainStartTimestampMonotonic; "
                         "git -C ~/klipper rev-parse HEAD", check=False).stdout
    events = lab.upper(name) / "var/lib/ratos-sim/usb/events.jsonl"
    written = [e for e in map(json.loads, events.read_text().splitlines() if events.exists() else [])
               if e.get("event") in ("write", "erase", "bootloader-request")]
    return {"unit+head": show, "usb_writes": len(written)}


def pistate(lab: RunningFarm, name: str) -> dict[str, Any]:
    return json.loads(lab.ssh(name, "cat /var/lib/ratos-sim/state.json").stdout)


def klippy(lab: RunningFarm, name: str) -> dict[str, Any]:
    out = lab.ssh(name, "curl -s -m 5 'http://127.0.0.1:7125/printer/info'", check=False).stdout
    return json.loads(out)["result"] if out else {}


def run_entry(lab: RunningFarm, entry: str, limit: list[str], report: Path) -> subprocess.CompletedProcess[str]:
    inventory = str(lab.safety_inventory)  # type: ignore[attr-defined]
    limits = [arg for name in limit for arg in ("--limit", name)]
    if entry == "ratos-fleet":
        argv = [RATOS_FLEET, "update", inventory, *limits, "--report", str(report)]
    else:
        argv = [str(Path(sys.executable).parent / "pyinfra"), "-y", inventory, str(DEPLOYS / entry), *limits]
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)


@pytest.mark.parametrize("entry", ["provision.py", "update.py", "firmware.py", "printer_config.py", "ratos-fleet"])
def test_no_entry_point_disrupts_a_printer_that_is_not_positively_idle(lab: RunningFarm, entry: str,
                                                                      tmp_path: Path) -> None:
    before = {name: snapshot(lab, name) for name in GATED}
    result = run_entry(lab, entry, GATED, tmp_path / "report")
    assert "Traceback" not in result.stdout, result.stdout
    after = {name: snapshot(lab, name) for name in GATED}
    for name in GATED:
        if entry == "printer_config.py" and name == "g-held":
            # an idle printer whose config changed is restarted (through the gate): only the held
            # board and the Klipper commit are off limits there
            assert after[name]["usb_writes"] == before[name]["usb_writes"], name
            assert after[name]["unit+head"].splitlines()[-1] == before[name]["unit+head"].splitlines()[-1]
            continue
        assert after[name] == before[name], f"{entry} disrupted {name}:\n{result.stdout}"
    text = result.stdout
    if entry == "ratos-fleet":
        report = {p["host"]: p for p in json.loads((tmp_path / "report/report.json").read_text())["printers"]}
        assert all(report[name]["status"] in ("busy", "held", "failed") for name in GATED), report
        text = json.dumps(report)
        assert result.returncode != 0
    for name, why in (("g-printing", "busy (printing)"), ("g-paused", "busy (paused)"),
                      ("g-503", "Moonraker answered 503 while klipper.service is active"),
                      ("g-hang", "Moonraker did not answer while klipper.service is active"),
                      ("g-shutdown", "klippy is shut down"), ("g-activating", "klipper.service is activating"),
                      ("g-held", "never flashed unattended")):
        if entry == "printer_config.py":
            break  # writes config files (when_busy=write) and leaves the restart pending: checked above
        if entry == "firmware.py" and name == "g-held":
            continue  # its board already runs the firmware of the Klipper the Pi runs: nothing to hold
        assert why in text, f"{entry}: no reason given for {name}:\n{text[-3000:]}"


PREPARATION_FAILURES = {
    # a crystal the H723 build cannot take: olddefconfig drops it
    "bad-override": ("{**d, 'boards': [{**d['boards'][0], 'kconfig': {'STM32_CLOCK_REF_12M': 'y', "
                     "'STM32_CLOCK_REF_25M': 'n'}}]}", "", "Kconfig"),
    "unknown-symbol": ("{**d, 'boards': [{**d['boards'][0], 'kconfig': {'NO_SUCH_SYMBOL_X': 'y'}}]}", "",
                       "NO_SUCH_SYMBOL_X"),
    # the firmware folder cannot take the artifact (a file where the folder should be)
    "firmware-folder": ("d", "rm -rf ~/printer_data/firmware && printf full > ~/printer_data/firmware",
                        "printer_data/firmware"),
    # the Pi builds for the commit it will run, and that build does not resolve as asked
    "pi-build": ("{**d, 'firmware_build': 'pi', 'boards': [{**d['boards'][0], 'kconfig': "
                 "{'STM32_CLOCK_REF_12M': 'y', 'STM32_CLOCK_REF_25M': 'n'}}]}", "", "on the Pi"),
}


@pytest.mark.parametrize("case", sorted(PREPARATION_FAILURES))
def test_a_preparation_failure_leaves_the_printer_exactly_as_it_was(lab: RunningFarm, tmp_path: Path,
                                                                   case: str) -> None:
    data, setup, why = PREPARATION_FAILURES[case]
    inventory = tmp_path / "inventory.py"
    inventory.write_text(f"exec(open({str(lab.inventory)!r}).read())\n"
                         f"pis = [(n, {data} if n == 'p-badkconfig' else d) for n, d in pis]\n")
    if setup:
        lab.ssh("p-badkconfig", setup)
    try:
        before = snapshot(lab, "p-badkconfig")
        firmware_before = pistate(lab, "p-badkconfig")["mcus"]
        result = subprocess.run([RATOS_FLEET, "update", str(inventory), "--limit", "p-badkconfig", "--report",
                                 str(tmp_path / "report")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=900)
        assert result.returncode != 0 and "Traceback" not in result.stdout, result.stdout
        assert snapshot(lab, "p-badkconfig") == before, result.stdout
        assert pistate(lab, "p-badkconfig")["mcus"] == firmware_before
        if result.returncode == 2:  # refused by the inventory check, before any SSH
            assert why in result.stdout + result.stderr
            return
        report = json.loads((tmp_path / "report/report.json").read_text())["printers"][0]
        assert report["status"] == "failed" and why in json.dumps(report), report
    finally:
        if setup:
            lab.ssh("p-badkconfig", "rm -f ~/printer_data/firmware")


def test_a_toolboard_that_ignores_its_request_rolls_the_mainboard_back(lab: RunningFarm, tmp_path: Path) -> None:
    before = pistate(lab, "f-toolboard")
    head = lab.ssh("f-toolboard", "git -C ~/klipper rev-parse HEAD").stdout
    result = run_entry(lab, "ratos-fleet", ["f-toolboard"], tmp_path / "report")
    report = json.loads((tmp_path / "report/report.json").read_text())["printers"][0]
    assert report["status"] == "failed" and "rolled back" in report["reason"], result.stdout
    after = pistate(lab, "f-toolboard")
    versions = {m["name"]: (m["firmware"] or {}).get("version") for m in after["mcus"]}
    assert versions == {m["name"]: (m["firmware"] or {}).get("version") for m in before["mcus"]}
    assert lab.ssh("f-toolboard", "git -C ~/klipper rev-parse HEAD").stdout == head
    assert klippy(lab, "f-toolboard")["state"] == "ready"
    events = (lab.upper("f-toolboard") / "var/lib/ratos-sim/usb/events.jsonl").read_text()
    assert events.count('"event": "bootloader-request"') >= 2  # flashed, then given its old firmware back


@pytest.mark.parametrize("name, outcome", [
    ("f-ignore", "left as it was"),
    ("f-noreturn", "NEEDS ATTENTION"),
    ("f-stuck", "NEEDS ATTENTION"),
    ("f-corrupt", "converged-after-retry"),
    ("f-corrupt-pyusb", "converged-after-retry"),
])
def test_each_flash_fault_ends_on_a_working_pair_or_says_what_to_do(lab: RunningFarm, tmp_path: Path, name: str,
                                                                    outcome: str) -> None:
    head = lab.ssh(name, "git -C ~/klipper rev-parse HEAD").stdout
    result = run_entry(lab, "ratos-fleet", [name], tmp_path / "report")
    report = json.loads((tmp_path / "report/report.json").read_text())["printers"][0]
    info = klippy(lab, name)
    if outcome == "converged-after-retry":
        # the first write read back wrong (caught on both backends), the second was right
        assert report["status"] == "changed", result.stdout
        assert report["boards"][0]["read_back"] is True and "attempt 2" in report["boards"][0]["reason"]
        assert info["state"] == "ready"
        return
    assert report["status"] == "failed" and outcome in report["reason"], result.stdout
    assert lab.ssh(name, "git -C ~/klipper rev-parse HEAD").stdout == head  # Klipper never moved
    if outcome == "left as it was":
        assert info["state"] == "ready"  # old host, old firmware: a working pair
    else:
        assert "power-cycle" in report["reason"]
    assert pistate(lab, name)["services"]["klipper"] == "active"
    if name == "f-noreturn":
        return  # the board is gone from USB until someone power-cycles it (the report says so)
    # the board mended (a board reset, a better cable): the rerun converges
    lab.ssh(name, "sudo truncate -s 0 /var/lib/ratos-sim/usb/1-1.1/faults || "
                  "sudo touch /var/lib/ratos-sim/usb/1-1.1/faults")
    again = run_entry(lab, "ratos-fleet", [name], tmp_path / "again")
    report = json.loads((tmp_path / "again/report.json").read_text())["printers"][0]
    assert report["status"] == "changed" and report["boards"][0]["action"] == "flashed", again.stdout
    assert klippy(lab, name)["state"] == "ready"
    assert lab.ssh(name, "git -C ~/klipper rev-parse HEAD").stdout != head


def test_a_rerun_after_a_repaired_write_is_a_no_op(lab: RunningFarm, tmp_path: Path) -> None:
    result = run_entry(lab, "ratos-fleet", ["f-corrupt", "f-corrupt-pyusb"], tmp_path / "report")
    report = json.loads((tmp_path / "report/report.json").read_text())["printers"]
    assert {p["status"] for p in report} == {"converged"}, result.stdout


def agent_pid(lab: RunningFarm, name: str) -> int | None:
    """The pid of the agent holding the printer's lock on the Pi, None when nobody holds it."""
    out = lab.ssh(name, "cat /run/pyinfra-ratos/printer.lock 2>/dev/null", check=False).stdout.strip()
    return json.loads(out)["pid"] if out else None


def test_killing_the_controller_mid_flash_then_rerunning_at_once(lab: RunningFarm, tmp_path: Path) -> None:
    events = lab.upper("k-kill") / "var/lib/ratos-sim/usb/events.jsonl"
    first = subprocess.Popen([RATOS_FLEET, "update", str(lab.safety_inventory),  # type: ignore[attr-defined]
                              "--limit", "k-kill", "--report", str(tmp_path / "r1")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and '"event": "erase"' not in (events.read_text() if events.exists() else ""):
        time.sleep(0.05)
    assert '"event": "erase"' in events.read_text(), "the flash never started"
    os.killpg(first.pid, signal.SIGKILL)  # the controller dies; the agent on the Pi goes on
    first.wait()
    # a real flash takes tens of seconds; the emulated one a second: hold the orphaned agent
    # still so that the rerun surely meets it mid-flash
    pid = agent_pid(lab, "k-kill")
    assert pid, "the orphaned agent holds the printer's lock"
    lab.ssh("k-kill", f"sudo kill -STOP {pid}")
    try:
        unit = lab.ssh("k-kill", "systemctl show klipper -p MainPID -p ExecMainStartTimestampMonotonic").stdout
        again = run_entry(lab, "ratos-fleet", ["k-kill"], tmp_path / "r2")
        report = json.loads((tmp_path / "r2/report.json").read_text())["printers"][0]
        assert report["status"] == "busy" and "another pyinfra-ratos run" in report["reason"], again.stdout
        assert lab.ssh("k-kill", "systemctl show klipper -p MainPID -p ExecMainStartTimestampMonotonic").stdout \
            == unit  # nothing started or restarted Klipper under the flash
    finally:
        lab.ssh("k-kill", f"sudo kill -CONT {pid}")
    deadline = time.monotonic() + 120  # the orphaned agent finishes its flash and starts Klipper
    while time.monotonic() < deadline and agent_pid(lab, "k-kill"):
        time.sleep(0.2)
    final = run_entry(lab, "ratos-fleet", ["k-kill"], tmp_path / "r3")
    report = json.loads((tmp_path / "r3/report.json").read_text())["printers"][0]
    assert report["status"] in ("converged", "changed") and report["boards"][0]["action"] == "skipped", final.stdout
    assert klippy(lab, "k-kill")["state"] == "ready"
    assert len(re.findall(r'"event": "leave-request"', events.read_text())) == 1, "exactly one flash"


def test_a_hostile_tag_in_the_controllers_checkout_runs_nothing_on_any_pi(lab: RunningFarm, tmp_path: Path) -> None:
    """issue 14: a tag such as ``v0.13.9-$(touch${IFS}/tmp/X)`` on the pinned commit is data
    everywhere: in describe, bundles, artifact names, the agent's plan. Nothing is run with it."""
    source = lab.state / "klipper-template"
    commit = lab.info["versions"]["current"]["commit"]
    tag = "v0.13.9-$(touch${IFS}/tmp/pwned)`touch${IFS}/tmp/pwned2`;touch${IFS}/tmp/pwned3"
    subprocess.run(["git", "-C", str(source), "tag", tag, commit], check=True)
    try:
        result = run_entry(lab, "ratos-fleet", ["i-tag"], tmp_path / "report")
        assert "Traceback" not in result.stdout, result.stdout
        for pi in lab.info["pis"]:
            out = lab.ssh(pi["name"], "ls /tmp/pwned /tmp/pwned2 /tmp/pwned3 ~/pwned 2>/dev/null; true",
                          check=False).stdout
            assert out == "", f"the tag ran on {pi['name']}"
        assert not any(Path(p).exists() for p in ("/tmp/pwned", "/tmp/pwned2", "/tmp/pwned3"))
        report = json.loads((tmp_path / "report/report.json").read_text())["printers"][0]
        assert report["status"] == "failed" and "nothing was changed" in json.dumps(report), report
    finally:
        subprocess.run(["git", "-C", str(source), "tag", "-d", tag], check=True, capture_output=True)
