"""klipper.checkout: the plan from facts (pure), the controller's bundle, and the operation on the farm."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.firmware.bundle import BUNDLE_REF, BundleError, klipper_bundle
from pyinfra_ratos.operations.klipper import plan_checkout
from pyinfra_ratos.sim import farm as sim_farm
from pyinfra_ratos.sim.klipper_repo import create_template_repo

from .conftest import RunningFarm, running_farm

SCENARIO = Path(__file__).parent / "scenarios" / "provision-checkout.toml"
PIN = "a" * 40
CLEAN: dict[str, Any] = {
    "path": "/home/pi/klipper", "exists": True, "commit": "b" * 40, "version": "v0.13.0-3-gbbbbbbbbb", "dirty": False,
    "branch": "master", "remote_url": "https://github.com/Klipper3d/klipper.git", "owner": "pi", "ssh_user": "pi",
    "foreign_owner": False, "venv": True,
}
ONLINE = {"default_route": True, "reachable": {"github.com:443": True}}
OFFLINE = {"default_route": False, "reachable": {"github.com:443": False}}
DEPLOY = '''
from pyinfra import host
from pyinfra_ratos.facts.audit import FleetAudit
from pyinfra_ratos.operations import klipper

audit = host.get_fact(FleetAudit, hosts=["github.com:443"])
klipper.checkout(name="Klipper at the pin", commit=host.data.klipper_commit, klipper=audit["klipper"],
                 network=audit["network"], source=host.data.klipper_source,
                 bundle_cache=host.data.klipper_bundle_cache)
'''


# --- the plan --------------------------------------------------------------------------------


def test_a_clean_checkout_at_the_pin_is_left_alone() -> None:
    plan = plan_checkout(PIN, {**CLEAN, "commit": PIN}, ONLINE)
    assert plan.action == "noop" and not plan.changes_commit


def test_a_checkout_elsewhere_moves_and_fetches_from_origin_only_when_its_host_answers() -> None:
    online, offline = plan_checkout(PIN, CLEAN, ONLINE), plan_checkout(PIN, CLEAN, OFFLINE)
    assert online.changes_commit and online.online and online.current == "b" * 40
    assert offline.changes_commit and not offline.online


def test_a_missing_checkout_is_created_with_the_fleet_remote() -> None:
    plan = plan_checkout(PIN, {"path": "/home/pi/klipper", "exists": False, "ssh_user": "pi"}, ONLINE,
                         remote_url="https://github.com/Klipper3d/klipper.git")
    assert plan.create and plan.changes_commit and plan.remote.endswith("klipper.git")


def test_local_changes_are_never_overwritten() -> None:
    plan = plan_checkout(PIN, {**CLEAN, "dirty": True}, ONLINE)
    assert plan.action == "refuse" and plan.dirty and "git -C /home/pi/klipper stash" in plan.reason


def test_a_root_owned_checkout_is_given_back_to_the_ssh_user_even_at_the_pin() -> None:
    root = {**CLEAN, "owner": "root", "foreign_owner": True, "version": ""}
    assert plan_checkout(PIN, root, ONLINE).fix_owner
    at_pin = plan_checkout(PIN, {**root, "commit": PIN}, ONLINE)
    assert at_pin.action == "checkout" and at_pin.fix_owner and not at_pin.online
    refused = plan_checkout(PIN, root, ONLINE, fix_ownership=False)
    assert refused.action == "refuse" and "sudo chown -R pi: /home/pi/klipper" in refused.reason


def test_a_checkout_owned_by_another_user_is_refused() -> None:
    plan = plan_checkout(PIN, {**CLEAN, "owner": "ratos", "foreign_owner": True}, ONLINE)
    assert plan.action == "refuse" and "owned by ratos" in plan.reason


# --- the controller's bundle -----------------------------------------------------------------


def test_a_bundle_carries_the_commit_and_its_tags_so_the_pi_describes_it_alike(tmp_path: Path) -> None:
    versions = create_template_repo(tmp_path / "source")
    old = versions["old"]["commit"]
    bundle = klipper_bundle(tmp_path / "source", old, tmp_path / "cache")
    assert bundle.tags == ("v0.12.0",) and bundle.version == versions["old"]["version"]
    again = klipper_bundle(tmp_path / "source", old, tmp_path / "cache")
    assert again.path == bundle.path and again.path.stat().st_mtime_ns == bundle.path.stat().st_mtime_ns
    pi = tmp_path / "pi"
    subprocess.run(["git", "init", "-q", str(pi)], check=True)
    subprocess.run(["git", "-C", str(pi), "fetch", "-q", str(bundle.path), f"+{BUNDLE_REF}:{BUNDLE_REF}",
                    "+refs/tags/*:refs/tags/*"], check=True)
    subprocess.run(["git", "-C", str(pi), "checkout", "-q", "--detach", old], check=True)
    described = subprocess.run(["git", "-C", str(pi), "describe", "--always", "--tags", "--long", "--dirty"],
                               check=True, capture_output=True, text=True).stdout.strip()
    assert described == versions["old"]["version"]
    # the controller's checkout gained no ref
    refs = subprocess.run(["git", "-C", str(tmp_path / "source"), "for-each-ref", "--format=%(refname)"],
                          check=True, capture_output=True, text=True).stdout.split()
    assert refs == ["refs/heads/master", "refs/tags/v0.12.0", "refs/tags/v0.13.0"]


def test_a_commit_the_source_lacks_is_named_with_the_fix(tmp_path: Path) -> None:
    create_template_repo(tmp_path / "source")
    with pytest.raises(BundleError, match=r"does not hold commit cccccccccccc: `git -C .* fetch` it first"):
        klipper_bundle(tmp_path / "source", "c" * 40, tmp_path / "cache")


# --- on the farm -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(tmp_path_factory, SCENARIO, "farm-checkout") as running:
        yield running


def checkout(lab: RunningFarm, commit: str) -> subprocess.CompletedProcess[str]:
    deploy = lab.state / "checkout_deploy.py"
    deploy.write_text(DEPLOY)
    inventory = lab.state / "checkout-inventory.py"
    data = {"klipper_commit": commit, "klipper_bundle_cache": str(lab.state / "bundles")}
    inventory.write_text(
        "_farm = {}\n"
        f"exec(open({str(lab.inventory)!r}).read(), _farm)\n"
        f"pis = [(n, {{**d, **{data!r}}}) for n, d in _farm['pis']]\n")
    return lab.pyinfra(str(deploy), check=False, inventory=inventory)


def new_commit_on_the_controller(lab: RunningFarm) -> dict[str, str]:
    """A commit only the controller's checkout holds: the Pis must fetch it."""
    source = lab.state / "klipper-template"
    (source / "docs" / "Fleet.md").write_text("The fleet's own pin.\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "fleet", "GIT_AUTHOR_EMAIL": "fleet@example.invalid",
           "GIT_COMMITTER_NAME": "fleet", "GIT_COMMITTER_EMAIL": "fleet@example.invalid"}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(source), *args], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()

    git("add", "docs/Fleet.md")
    git("commit", "-q", "--no-verify", "-m", "docs: the fleet's pin")
    return {"commit": git("rev-parse", "HEAD"), "version": git("describe", "--always", "--tags", "--long")}


def test_the_checkout_moves_both_pis_to_the_pin_from_one_cached_bundle(lab: RunningFarm) -> None:
    old = new_commit_on_the_controller(lab)
    done = checkout(lab, old["commit"])
    assert done.returncode == 0, done.stdout
    for pi in ("co-root", "co-online"):
        klipper = lab.state / "pis" / pi / "home/pi/klipper"
        assert os.stat(klipper).st_uid == sim_farm.PI_UID and os.stat(klipper / "README.md").st_uid == sim_farm.PI_UID
        described = lab.ssh(pi, "git -C ~/klipper describe --always --tags --long --dirty").stdout.strip()
        assert described == old["version"]  # as pi: no dubious ownership any more
        assert re.search(rf"\[{pi}\].*from the controller's bundle .*\(fetching from origin failed", done.stdout), done.stdout
        assert (lab.state / "pis" / pi / f"home/pi/.cache/pyinfra-ratos/klipper-{old['commit'][:12]}.bundle").exists()
    assert [p.name for p in (lab.state / "bundles").glob("*.bundle")] == [f"klipper-{old['commit']}.bundle"]
    rerun = checkout(lab, old["commit"])
    assert rerun.returncode == 0 and re.search(r"Grand total\s+2\s+-\s+-\s+2", rerun.stdout), rerun.stdout
