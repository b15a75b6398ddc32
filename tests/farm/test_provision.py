"""deploys/provision.py on the virtual farm: bare Pis come up from their inventory records, a rerun
changes nothing, a replaced SD card gets its calibration back, a hand-edited Klipper is left alone."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.printer.klipper_config import split_save_config
from pyinfra_ratos.operations import backup
from pyinfra_ratos.sim import pihome

from .conftest import RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "provision-lab.toml"
DEPLOY = Path(__file__).resolve().parents[2] / "deploys" / "provision.py"
FRESH = ("prov-online", "prov-offline")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-provision") as running:
        yield running


def provision(lab: RunningFarm, *names: str, **data: Any) -> str:
    return run(lab, *names, **data).stdout


def run(lab: RunningFarm, *names: str, **data: Any) -> subprocess.CompletedProcess[str]:
    """Run the deploy on ``names``, their records being the farm's plus the fleet's data."""
    fleet = {
        "klipper_commit": lab.info["versions"]["current"]["commit"], "printer_model": "v-core-3",
        "printer_size": 300, "timezone": "Europe/Copenhagen",
        "config_backups": str(lab.state / "backups"), "klipper_bundle_cache": str(lab.state / "bundles"), **data,
    }
    inventory = lab.state / "provision-inventory.py"
    inventory.write_text(
        "_farm = {}\n"
        f"exec(open({str(lab.inventory)!r}).read(), _farm)\n"
        "import json as _json\n"
        f"_fleet = _json.loads({json.dumps(fleet)!r})\n"
        f"pis = [(n, {{**d, **_fleet}}) for n, d in _farm['pis'] if n in {list(names)!r}]\n")
    return lab.pyinfra(str(DEPLOY), check=False, inventory=inventory)


def grand_total(output: str) -> dict[str, int]:
    row = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", output)
    assert row, output
    values = [0 if v == "-" else int(v) for v in row.groups()]
    return dict(zip(("hosts", "success", "error", "no_change"), values))


def home(lab: RunningFarm, pi: str) -> Path:
    return lab.state / "pis" / pi / "home" / "pi"


def pistate(lab: RunningFarm, pi: str) -> dict[str, Any]:
    return json.loads((lab.upper(pi) / "var/lib/ratos-sim/state.json").read_text())


def git(lab: RunningFarm, pi: str, *args: str) -> str:
    return lab.ssh(pi, "git -C ~/klipper " + " ".join(args)).stdout.strip()


@pytest.fixture(scope="module")
def fresh_runs(lab: RunningFarm) -> tuple[str, str]:
    first = provision(lab, *FRESH)
    second = provision(lab, *FRESH)
    return first, second


# --- pure: the controller's side of backups --------------------------------------------------


def _tar(tmp_path: Path, files: dict[str, bytes]) -> str:
    path = tmp_path / "incoming.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            source = tmp_path / "src" / name
            source.parent.mkdir(parents=True, exist_ok=True)
            source.write_bytes(data)
            tar.add(source, arcname=f"./{name}")
    return str(path)


def test_a_backup_version_is_made_only_when_the_content_changed_and_old_ones_are_pruned(tmp_path: Path) -> None:
    folder = tmp_path / "backups" / "pi1"
    folder.mkdir(parents=True)
    first, _ = backup.store_version(_tar(tmp_path, {"printer.cfg": b"a"}), str(folder), keep=2)
    assert first and backup.store_version(_tar(tmp_path, {"printer.cfg": b"a"}), str(folder), keep=2)[0] is None
    backup.store_version(_tar(tmp_path, {"printer.cfg": b"b"}), str(folder), keep=2)
    newest, _ = backup.store_version(_tar(tmp_path, {"printer.cfg": b"c", "sub/x.cfg": b"x"}), str(folder), keep=2)
    kept = backup.versions(folder)
    assert len(kept) == 2 and kept[-1].name == newest and (kept[-1] / "files/sub/x.cfg").read_bytes() == b"x"
    # the controller's digest is the one the Pi computes from its listing
    lines = (kept[-1] / backup.MANIFEST).read_text().splitlines()
    assert backup.version_digest(kept[-1]) == backup.parse_backup_state(
        [f"file\t{line.split()[0]}\t1\t./{line.split()[1]}" for line in lines])["digest"]


def test_only_a_missing_or_ratos_initial_printer_cfg_is_restored_never_a_calibrated_one() -> None:
    assert backup.restore_due({"printer_cfg": False})
    assert backup.restore_due({"printer_cfg": True, "initial": True, "save_config": False})
    assert not backup.restore_due({"printer_cfg": True, "initial": False, "save_config": False})
    assert not backup.restore_due({"printer_cfg": True, "initial": True, "save_config": True})


# --- on the farm -----------------------------------------------------------------------------


@pytest.mark.parametrize("pi", FRESH)
def test_a_bare_pi_is_provisioned_from_its_inventory_record(lab: RunningFarm, fresh_runs: tuple[str, str], pi: str) -> None:
    first, _ = fresh_runs
    assert grand_total(first)["error"] == 0, first
    current = lab.info["versions"]["current"]
    assert git(lab, pi, "rev-parse", "HEAD") == current["commit"]
    # tags came along: the Pi's Klipper describes itself exactly as the controller's does
    assert git(lab, pi, "describe", "--always", "--tags", "--long", "--dirty") == current["version"]
    state = pistate(lab, pi)
    assert state["services"]["klipper"] == "active" and state["enabled"]["klipper"] is True
    assert state["host_version"] == current["version"]
    assert [m["firmware"]["version"] for m in state["mcus"]] == [current["version"]]
    config = home(lab, pi) / "printer_data" / "config"
    assert (config / "printer.cfg").read_text().startswith("[include RatOS.cfg]")
    assert "initial-setup.cfg" not in (config / "printer.cfg").read_text()
    assert (config / "RatOS.cfg").exists()
    assert f"pinned_commit: {current['commit']}" in (config / "moonraker.conf").read_text()
    assert 'SYMLINK+="RatOS/$attr{serial}"' in (lab.upper(pi) / "etc/udev/rules.d/98-pyinfra-ratos.rules").read_text()
    assert lab.ssh(pi, "readlink /etc/localtime").stdout.strip() == "/usr/share/zoneinfo/Europe/Copenhagen"


def test_a_second_run_on_provisioned_pis_changes_nothing(fresh_runs: tuple[str, str]) -> None:
    _, second = fresh_runs
    total = grand_total(second)
    assert (total["success"], total["error"]) == (0, 0) and total["no_change"] > 0, second


def sshd_sessions(lab: RunningFarm, pi: str) -> int:
    log = lab.upper(pi) / "var/log/ratos-sim/sshd.log"
    return log.read_text().count("Starting session") if log.exists() else 0


def test_a_converged_provision_costs_one_ssh_command_per_pi(lab: RunningFarm, fresh_runs: tuple[str, str]) -> None:
    before = {pi: sshd_sessions(lab, pi) for pi in FRESH}
    total = grand_total(provision(lab, *FRESH))
    assert (total["success"], total["error"]) == (0, 0)
    # ProvisionState: hostname, timezone, packages, units, udev rule, audit and config folder at once
    assert {pi: sshd_sessions(lab, pi) - before[pi] for pi in FRESH} == {pi: 1 for pi in FRESH}


def test_an_offline_pi_gets_klipper_from_the_controllers_bundle(lab: RunningFarm, fresh_runs: tuple[str, str]) -> None:
    first, _ = fresh_runs
    commit = lab.info["versions"]["current"]["commit"]
    assert re.search(r"\[prov-offline\].*from the controller's bundle klipper-\w+\.bundle "
                     r"\(the Pi cannot reach https://github.com/Klipper3d/klipper.git\)", first), first
    fetch_head = (home(lab, "prov-offline") / "klipper/.git/FETCH_HEAD").read_text()
    assert f"{commit}\t\t'refs/pyinfra-ratos/pinned' of /home/pi/.cache/pyinfra-ratos/klipper-{commit[:12]}.bundle" \
        in fetch_head
    assert (lab.state / "bundles" / f"klipper-{commit}.bundle").exists()


def test_an_online_pi_falls_back_to_the_bundle_when_github_fails(lab: RunningFarm, fresh_runs: tuple[str, str]) -> None:
    first, _ = fresh_runs
    assert re.search(r"\[prov-online\].*from the controller's bundle .*\(fetching from origin failed: "
                     r"fatal: unable to access 'https://github.com/Klipper3d/klipper.git/'", first), first
    assert "klipper-" in (home(lab, "prov-online") / "klipper/.git/FETCH_HEAD").read_text()


def test_a_replaced_sd_card_gets_its_save_config_block_back_byte_for_byte(lab: RunningFarm) -> None:
    pi = "prov-replaced"
    printer_cfg = home(lab, pi) / "printer_data" / "config" / "printer.cfg"
    out = provision(lab, pi)
    assert grand_total(out)["error"] == 0, out
    before = printer_cfg.read_bytes()
    assert split_save_config(before.decode())[1] == pihome.save_config_block(pi)

    printer_cfg.write_text(pihome.ratos_initial_printer_cfg())  # the new card, as RatOS ships it
    out = provision(lab, pi)
    assert grand_total(out)["error"] == 0, out
    assert "restoring backup" in out
    assert printer_cfg.read_bytes() == before
    rerun = provision(lab, pi)
    assert (grand_total(rerun)["success"], grand_total(rerun)["error"]) == (0, 0), rerun


def test_a_dirty_klipper_checkout_is_refused_and_left_as_it_is(lab: RunningFarm) -> None:
    pi = "prov-dirty"
    lab.ssh(pi, "cd ~/klipper && echo '# my fix' >> README.md && echo '# mine' >> src/Makefile")
    head = git(lab, pi, "rev-parse", "HEAD")
    done = run(lab, pi, klipper_commit=lab.info["versions"]["old"]["commit"])
    out = done.stdout
    assert done.returncode != 0, out
    assert "/home/pi/klipper has 2 changed files (git status): not overwriting them" in out
    assert "git -C /home/pi/klipper stash" in out
    assert git(lab, pi, "rev-parse", "HEAD") == head
    assert git(lab, pi, "diff", "--name-only").splitlines() == ["README.md", "src/Makefile"]


def test_a_fresh_scenario_pi_has_no_checkout_and_a_stopped_klipper_unless_told() -> None:
    from pyinfra_ratos.sim.scenario import ScenarioError, parse_scenario

    pis = parse_scenario({"pi": [{"name": "a", "fresh": True}, {"name": "b", "fresh": True, "klipper": "active"},
                                 {"name": "c"}]}).pis
    assert [(p.fresh, p.klipper) for p in pis] == [(True, "inactive"), (True, "active"), (False, "active")]
    with pytest.raises(ScenarioError, match="key 'fresh' is 'yes'; use true or false"):
        parse_scenario({"pi": [{"name": "a", "fresh": "yes"}]})
