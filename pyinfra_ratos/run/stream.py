"""Progress lines a remote command prints while it runs, handed to a listener as they arrive.

pyinfra reads a command's output line by line as it comes (``connectors.util.read_output_buffers``
runs a reader greenlet per stream) but hands the lines over only when the command ends. The
printer agent's ``RATOS-PROGRESS`` lines are wanted as they happen: :func:`listening` wraps that
reader (as the SSH and local connectors call it) so that each such line goes to the listener with
the host it came from, and is left out of the command's output (the rest is untouched). No extra
SSH command, channel or poll: the lines ride the agent's own stdout. Outside :func:`listening`
nothing is wrapped, and with another pyinfra whose connectors read differently the progress lines
stay in the output unseen: the run itself never depends on them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pyinfra.context import ctx_host

from pyinfra_ratos.firmware.agent import PROGRESS_PREFIX

Listener = Callable[[str, dict[str, Any]], None]


def progress_record(line: str) -> dict[str, Any] | None:
    """The agent's progress record in one output line, None when the line is not one."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        record = json.loads(line[len(PROGRESS_PREFIX):])
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("phase"), str) else None


def tap(lines: Iterable[Any], host_name: str, listener: Listener) -> Iterator[Any]:
    """``lines`` as they come, without the progress lines, which go to ``listener`` instead."""
    for line in lines:
        text = line if isinstance(line, str) else bytes(line).decode("utf-8", "replace")
        record = progress_record(text.rstrip("\r\n"))
        if record is None:
            yield line
            continue
        try:
            listener(host_name, record)
        except Exception:  # noqa: BLE001, S112 - showing progress never fails the command
            continue


def _wrapped(original: Callable[..., Any], listener: Listener) -> Callable[..., Any]:
    def read_output_buffers(stdout_buffer: Iterable[Any], stderr_buffer: Iterable[Any], *args: Any,
                            **kwargs: Any) -> Any:
        host = ctx_host.get()  # the operation's greenlet: the host whose command this is
        if host is not None:
            stdout_buffer = tap(stdout_buffer, host.name, listener)
        return original(stdout_buffer, stderr_buffer, *args, **kwargs)

    read_output_buffers.ratos_original = original  # type: ignore[attr-defined]
    return read_output_buffers


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Within: every progress line of a remote command goes to ``listener(host_name, record)``."""
    from pyinfra.connectors import ssh, util  # util's own callers: the local connector

    modules = [module for module in (ssh, util) if hasattr(module, "read_output_buffers")]
    saved = {module: module.read_output_buffers for module in modules}
    for module in modules:
        module.read_output_buffers = _wrapped(saved[module], listener)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in saved.items():
            module.read_output_buffers = original  # type: ignore[attr-defined]
