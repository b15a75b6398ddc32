"""
Put the Pi's Klipper checkout at the fleet's pinned commit, from GitHub or from the controller.

The decision is :func:`plan_checkout`, pure, made from facts the caller read once
(``KlipperHost``, ``NetworkReachability``, or both from ``FleetAudit``): pyinfra runs an operation's
body twice, so reading facts here would double the round trips.

Ownership: git refuses a checkout another user owns ("dubious ownership") and klippy's version
becomes ``?``, so git always runs as the SSH user, never as root. A checkout owned by root (the
usual accident: ``sudo git pull``) is handed back to the SSH user with ``sudo -n chown -R`` (RatOS
itself expects ``pi`` to own ``~/klipper``); one owned by any other user is refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra import host
from pyinfra.api import FunctionCommand, OperationValueError, QuoteString, StringCommand, operation
from pyinfra_ratos.facts.remote import remote_endpoint

from pyinfra_ratos.firmware.bundle import BUNDLE_REF, BundleError, klipper_bundle
from pyinfra_ratos.printer import provision_settings

from .printer import MOONRAKER_URL, restart_command

DEFAULT_REMOTE = provision_settings.DEFAULT_REMOTE
# On the Pi, relative to the SSH user's home (sftp paths resolve against it): one bundle per commit.
REMOTE_BUNDLE_DIR = ".cache/pyinfra-ratos"
# why the last fetch from origin failed, for the bundle step to report
ORIGIN_LOG = f"{REMOTE_BUNDLE_DIR}/klipper-origin-fetch.log"
_COMMIT = re.compile(r"^[0-9a-f]{40}\Z")


# --- pure decision ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckoutPlan:
    action: str  # "noop" | "refuse" | "checkout"
    reason: str
    path: str = ""
    current: str = ""  # the commit checked out now ("" when none)
    create: bool = False  # no checkout yet: ``git init`` one with ``origin`` = remote_url
    fix_owner: bool = False  # root owns it: chown it back to the SSH user first
    online: bool = False  # the git remote's host answers: try ``git fetch origin`` first
    remote: str = ""  # the URL a fetch from origin uses
    dirty: bool = False  # refused for local changes: the Pi counts them in the message

    @property
    def changes_commit(self) -> bool:
        """The checkout moves to another commit (the caller then restarts Klipper when idle)."""
        return self.action == "checkout"


def remote_reachable(network: Mapping[str, Any], url: str) -> bool:
    """Whether ``NetworkReachability`` saw the git remote's host answer on its port."""
    endpoint = remote_endpoint(url)
    if endpoint is None:
        return False
    return bool((network.get("reachable") or {}).get(f"{endpoint[0]}:{endpoint[1]}"))


def dirty_message(path: str, count: str = "local changes to tracked") -> str:
    return (f"{path} has {count} files (git status): not overwriting them. Fix: keep "
            f"them with `git -C {path} stash` (or commit them to a branch), or drop them with "
            f"`git -C {path} checkout -- .`, then rerun")


def plan_checkout(
    commit: str, klipper: Mapping[str, Any], network: Mapping[str, Any],
    remote_url: str = DEFAULT_REMOTE, fix_ownership: bool = True,
) -> CheckoutPlan:
    """What to do to put the checkout described by ``klipper`` (``KlipperHost``) at ``commit``."""
    path = str(klipper.get("path") or "~/klipper")
    if not klipper:
        return CheckoutPlan("refuse", "cannot read the Pi's Klipper checkout (the KlipperHost fact is empty)", path)
    if not klipper.get("exists"):
        return CheckoutPlan("checkout", f"no checkout at {path}: creating it", path, create=True,
                            online=remote_reachable(network, remote_url), remote=remote_url)
    owner, ssh_user = str(klipper.get("owner") or ""), str(klipper.get("ssh_user") or "")
    current = str(klipper.get("commit") or "")
    if not current:
        return CheckoutPlan("refuse", f"{path} exists but is not a git checkout with a commit: move it away "
                                      "(`mv ~/klipper ~/klipper.old`) and rerun", path)
    fix_owner = bool(klipper.get("foreign_owner")) and owner == "root"
    if klipper.get("foreign_owner") and not fix_owner:
        return CheckoutPlan("refuse", f"{path} is owned by {owner}, not by {ssh_user}: git would refuse it "
                                      f"(dubious ownership). Fix: `sudo chown -R {ssh_user}: {path}`", path, current)
    if fix_owner and not fix_ownership:
        return CheckoutPlan("refuse", f"{path} is owned by root: git (and klippy's version) refuse it as "
                                      f"{ssh_user}. Fix: `sudo chown -R {ssh_user}: {path}`", path, current)
    if klipper.get("dirty"):
        return CheckoutPlan("refuse", dirty_message(path), path, current, dirty=True)
    remote = str(klipper.get("remote_url") or remote_url)
    if current == commit:
        if fix_owner:
            return CheckoutPlan("checkout", f"{path} is at {commit[:12]} but owned by root: giving it back to "
                                            f"{ssh_user}", path, current, fix_owner=True, remote=remote)
        return CheckoutPlan("noop", f"{path} is at {commit[:12]}, clean", path, current)
    return CheckoutPlan("checkout", f"{path}: {current[:12]} -> {commit[:12]}", path, current, fix_owner=fix_owner,
                        online=remote_reachable(network, remote), remote=remote)


# --- commands --------------------------------------------------------------------------------


def _fail(message: str) -> StringCommand:
    return StringCommand("printf", "'%s\\n'", QuoteString(f"pyinfra-ratos: {message}"), ">&2;", "exit", "1")


def _script(*lines: str) -> StringCommand:
    return StringCommand("sh", "-c", QuoteString("\n".join(lines)))


_HEADER = (
    "say() { printf 'pyinfra-ratos: %s\\n' \"$*\"; }",
    "fail() { printf 'pyinfra-ratos: %s\\n' \"$*\" >&2; exit 1; }",
    # never a prompt for credentials or a host key: a fetch that cannot run must fail, not hang
    "export GIT_TERMINAL_PROMPT=0 GIT_SSH_COMMAND='ssh -o BatchMode=yes'",
)


def _dirty_fail(path: str) -> list[str]:
    """Shell lines failing with :func:`dirty_message` for ``$n`` changed files: the message is
    data (two quoted variables around the count), never script text."""
    before, after = dirty_message(path, "\0 changed").split("\0")
    return [f"pre={shlex.quote(before)}; post={shlex.quote(after)}", 'fail "$pre$n$post"']


def dirty_command(path: str) -> StringCommand:
    """Fail the host, naming how many tracked files changed (read with safe.directory: any owner)."""
    return _script(
        *_HEADER, f"p={shlex.quote(path)}",
        'n=$(git -c safe.directory="$p" -C "$p" status --porcelain --untracked-files=no | wc -l)',
        *_dirty_fail(path),
    )


def prepare_script(plan: CheckoutPlan, commit: str, fetch_timeout: int) -> StringCommand:
    """Owner fix, creation, the dirty re-check (it may have changed since the facts), origin fetch."""
    p = shlex.quote(plan.path)
    keep = shlex.quote(f"klipper-{commit[:12]}.bundle")
    lines = [*_HEADER, f"p={p}; c={shlex.quote(commit)}", f'mkdir -p "$HOME"/{REMOTE_BUNDLE_DIR} || exit 1',
             f'rm -f "$HOME"/{ORIGIN_LOG}',
             # the bundle of an older pin is dead weight on the SD card
             f'find "$HOME"/{REMOTE_BUNDLE_DIR} -maxdepth 1 -name "klipper-*.bundle" ! -name {keep} -delete 2>/dev/null']
    if plan.fix_owner:
        lines.append('sudo -n chown -R "$(id -un):$(id -gn)" -- "$p" || fail "$p is owned by root and '
                     '\\`sudo -n chown\\` failed: run \\`sudo chown -R $(id -un): $p\\` and rerun"')
    if plan.create:
        lines += [
            '[ -e "$p" ] && fail "$p appeared since it was read; rerun"',
            f'git init -q -- "$p" && git -C "$p" remote add origin {shlex.quote(plan.remote)} '
            '|| fail "cannot create a git checkout at $p"',
            'say "created an empty checkout at $p"',
        ]
    lines += [
        'owner=$(stat -c %U -- "$p")',
        '[ "$owner" = "$(id -un)" ] || fail "$p is owned by $owner since it was read; rerun"',
        'n=$(git -C "$p" status --porcelain --untracked-files=no | wc -l)',
        'if [ "$n" -ne 0 ]; then', *_dirty_fail(plan.path), "fi",
    ]
    if plan.online:
        lines += [
            'if ! git -C "$p" cat-file -e "$c^{commit}" 2>/dev/null; then',
            f'  if out=$(timeout {int(fetch_timeout)} git -C "$p" -c http.lowSpeedLimit=1000 -c http.lowSpeedTime=30 '
            'fetch -q --tags origin 2>&1); then say "fetched from origin";',
            f'  else printf "%s\\n" "$out" | tail -n 1 | tee "$HOME"/{ORIGIN_LOG}; fi',
            "fi",
        ]
    return _script(*lines, "exit 0")


def fetch_bundle(
    state: Any, host: Any, path: str, commit: str, source: str | None, cache: str | None, online: bool, remote: str,
) -> bool:
    """At execution time: when the commit is still missing, fetch it from the controller's bundle.

    Runs after the origin fetch, so the bundle is made and uploaded only for a Pi that needs it,
    and only once: a Pi that holds the same bundle already (same sha256) is not sent it again.
    """
    quoted = QuoteString(path)
    have, out = host.run_shell_command(StringCommand("sh", "-c", QuoteString(
        f'git -C {shlex.quote(path)} cat-file -e {commit}^{{commit}} 2>/dev/null && exit 0\n'
        f'cat "$HOME"/{ORIGIN_LOG} 2>/dev/null; exit 1')))
    if have:
        return True
    why = (f"fetching from origin failed: {out.stdout.strip()}" if online and out.stdout.strip()
           else f"the Pi cannot reach {remote}" if not online else "origin does not have it")
    if not source:
        host.log_styled(f"{path}: commit {commit[:12]} is not on the Pi and cannot be fetched; set klipper_source "
                        "(a checkout on the controller holding it) so the controller can send it", fg="red")
        return False
    try:
        bundle = klipper_bundle(source, commit, cache)
    except BundleError as error:
        host.log_styled(f"{path}: {error}", fg="red")
        return False
    remote_file = f"{REMOTE_BUNDLE_DIR}/{bundle.remote_name}"
    _, out = host.run_shell_command(StringCommand("sha256sum", QuoteString(remote_file), "2>/dev/null", "||", "true"))
    if not out.stdout.startswith(bundle.sha256):
        if not host.put_file(str(bundle.path), remote_file):
            host.log_styled(f"{path}: uploading the Klipper bundle failed (disk full?)", fg="red")
            return False
    # the bundle path under "$HOME", unquoted there so the Pi's shell expands it
    ok, out = host.run_shell_command(StringCommand(
        "git", "-C", quoted, "fetch", "-q", f'"$HOME"/{shlex.quote(remote_file)}',
        QuoteString(f"+{BUNDLE_REF}:{BUNDLE_REF}"), QuoteString("+refs/tags/*:refs/tags/*"),
    ))
    if not ok:
        host.log_styled(f"{path}: git fetch from the controller's bundle failed: {out.stderr[-400:]}", fg="red")
        return False
    host.log(f"fetched Klipper {commit[:12]} ({bundle.version}) from the controller's bundle {bundle.remote_name} "
             f"({why})")
    return True


def move_of(plan: CheckoutPlan, commit: str, klipper: Mapping[str, Any]) -> dict[str, str] | None:
    """What the printer agent checks out (``firmware.transaction(klipper=...)``), or None."""
    if not plan.changes_commit:
        return None
    return {"path": str(klipper.get("path") or plan.path), "user": str(klipper.get("ssh_user") or ""),
            "from": plan.current, "to": commit}


# --- operations ------------------------------------------------------------------------------


def _checked(commit: str, fetch_timeout: int) -> str | None:
    if (host.current_op_global_arguments or {}).get("_sudo"):
        raise OperationValueError("klipper.fetch/checkout run git as the checkout's owner, never as root: drop "
                                  "_sudo (they use `sudo -n` themselves only to give a root-owned checkout back)")
    if isinstance(fetch_timeout, bool) or not isinstance(fetch_timeout, int) or fetch_timeout < 1:
        raise OperationValueError(f"fetch_timeout={fetch_timeout!r}: seconds, an int >= 1")
    if not isinstance(commit, str) or not _COMMIT.fullmatch(commit):
        return (f"{host.name}: klipper_commit {commit!r} is not a full commit hash. Fix: use the 40 "
                "lower-case hex digits of `git rev-parse HEAD`. Nothing was changed.")
    return None


def _fetch(commit: str, klipper: Mapping[str, Any], network: Mapping[str, Any], source: str | None,
           remote_url: str, fix_ownership: bool, fetch_timeout: int, bundle_cache: str | None):
    """The fetch's commands; returns the plan when the checkout can move (None: refused or converged)."""
    problem = _checked(commit, fetch_timeout)
    if problem:
        yield _fail(problem)
        return None
    plan = plan_checkout(commit, klipper, network, remote_url, fix_ownership)
    if plan.action == "noop":
        host.noop(plan.reason)
        return None
    if plan.action == "refuse":
        yield dirty_command(plan.path) if plan.dirty else _fail(f"{host.name}: {plan.reason}")
        return None
    yield prepare_script(plan, commit, fetch_timeout)
    yield FunctionCommand(fetch_bundle, (plan.path, commit, source, bundle_cache, plan.online, plan.remote), {})
    return plan


@operation()
def fetch(
    commit: str,
    klipper: Mapping[str, Any],
    network: Mapping[str, Any],
    source: str | None = None,
    remote_url: str = DEFAULT_REMOTE,
    fix_ownership: bool = True,
    fetch_timeout: int = 600,
    bundle_cache: str | None = None,
):
    """
    Bring ``commit`` into the Pi's Klipper checkout without moving it (the preparation of an update).

    + commit: the fleet's pinned commit (40 hex digits, host data ``klipper_commit``)
    + klipper: the Pi's ``KlipperHost`` fact (``FleetAudit()["klipper"]``), read once by the caller
    + network: the Pi's ``NetworkReachability`` fact (``FleetAudit(hosts=[...])["network"]``)
    + source: a Klipper checkout on the controller holding ``commit`` (host data ``klipper_source``):
      the bundle an offline Pi gets Klipper from
    + remote_url: ``origin`` of a checkout created here (an existing one keeps its own)
    + fix_ownership: a root-owned checkout is given back to the SSH user (else refused)
    + fetch_timeout: seconds a ``git fetch`` from origin may take
    + bundle_cache: where the controller keeps its bundles (default ``~/.cache/pyinfra-ratos/bundles``)

    Nothing happens when the checkout is at ``commit`` with a clean tree. Otherwise, when the
    remote's host is reachable it fetches from ``origin``; when it is not, or the fetch fails, the
    controller makes a git bundle of ``commit`` (once per commit), uploads it once per Pi and the
    Pi fetches from that. A missing checkout is created (``git init``, empty). A tree with local
    changes is never overwritten: the host fails, saying how many files changed and how to fix it.
    The working tree, and Klipper, are left as they are: the printer agent checks the commit out
    (:func:`pyinfra_ratos.operations.firmware.transaction`, or :func:`checkout`).

    **Example:**

    .. code:: python

        audit = host.get_fact(FleetAudit, hosts=["github.com:443"])
        klipper.fetch(
            name="Bring the fleet's Klipper commit",
            commit="0d67d9c45e6e8d1a7c0f2b6f4a1e9d3c5b7a8f90",
            klipper=audit["klipper"], network=audit["network"], source="/srv/klipper",
        )
    """
    yield from _fetch(commit, klipper, network, source, remote_url, fix_ownership, fetch_timeout, bundle_cache)


@operation()
def checkout(
    commit: str,
    klipper: Mapping[str, Any],
    network: Mapping[str, Any],
    source: str | None = None,
    remote_url: str = DEFAULT_REMOTE,
    fix_ownership: bool = True,
    fetch_timeout: int = 600,
    bundle_cache: str | None = None,
    moonraker_url: str = MOONRAKER_URL,
):
    """
    Put the Klipper checkout at ``commit`` (detached, tags kept so ``git describe`` matches) and
    restart Klipper on it, through the printer agent: only when the printer is idle right then.

    + commit, klipper, network, source, remote_url, fix_ownership, fetch_timeout, bundle_cache:
      as :func:`fetch`
    + moonraker_url: Moonraker as seen from the Pi

    :func:`fetch` first; then the agent re-checks on the Pi that the printer is positively idle,
    stops Klipper, checks the commit out as the checkout's owner, starts Klipper and verifies it
    started anew, and checks the previous commit out again if anything failed. A printer that is
    not idle is left as it is and the host fails with exit 75 (the fetched objects stay).

    **Example:**

    .. code:: python

        audit = host.get_fact(FleetAudit, hosts=["github.com:443"])
        klipper.checkout(
            name="Klipper at the fleet's commit",
            commit="0d67d9c45e6e8d1a7c0f2b6f4a1e9d3c5b7a8f90",
            klipper=audit["klipper"], network=audit["network"],
            source="/srv/klipper",
        )
    """
    from pyinfra_ratos.operations.firmware import agent_command  # firmware imports printer, as this does

    plan = yield from _fetch(commit, klipper, network, source, remote_url, fix_ownership, fetch_timeout, bundle_cache)
    move = move_of(plan, commit, klipper) if plan is not None else None
    if move is not None and move["to"] != move["from"]:
        yield agent_command({"moonraker": moonraker_url, "klipper": move})


@operation()
def restart(config_dir: str = "~/printer_data/config", moonraker_url: str = MOONRAKER_URL):
    """
    Restart Klipper unless the printer is not idle on the Pi right then (then it is left pending).

    + config_dir: Klipper's config folder (where a pending restart is marked for the next deploy)
    + moonraker_url: Moonraker as seen from the Pi

    The printer agent re-checks the printer on the Pi right before restarting (minutes may pass on
    a big farm) and counts the restart done only when the unit's main PID or start time changed.

    **Example:**

    .. code:: python

        klipper.restart(name="Restart Klipper")
    """
    yield restart_command(config_dir, "klipper", moonraker_url)
