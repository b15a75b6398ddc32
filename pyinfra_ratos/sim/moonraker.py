"""A Moonraker stand-in for a virtual Pi: the HTTP endpoints our deploys use, with real shapes.

Real Moonraker needs a running klippy, so this answers from the Pi's state file instead: every
request reads it fresh, and klippy's state is derived from it by :func:`derive_klippy` the way
klippy itself would end up (disconnected, ``error`` with klippy's exact messages, or ``ready``).
Status codes, status lines and error bodies follow Moonraker (tornado) so that clients written
against the stand-in behave the same against a real printer.

Knobs in the state file (set from a scenario, or at run time with ``ratos-sim-knob``, see
:mod:`pyinfra_ratos.sim.knobs`), read afresh on every request:

- ``moonraker_fault: "503"``: Moonraker has lost klippy. Every ``/printer/*`` endpoint answers
  503 ``Klippy Host not connected`` (the body and status line of a stopped klippy) and
  ``/server/info`` says ``klippy_connected: false``, whatever klippy and the print underneath do.
- ``moonraker_fault: "hang"``: every request is accepted and read, then never answered (the
  connection stays open until the client gives up), or answered ``moonraker_hang_seconds`` after
  it came when that is > 0. Held connections cost no thread (:mod:`hangpool`).
- ``klippy: "shutdown"``: klippy after an emergency stop (M112): ``webhooks.state`` and
  ``/printer/info`` ``state`` are ``shutdown`` with klippy's message; a print that was running
  reads ``print_stats.state: paused`` (``virtual_sdcard.is_active`` false, ``idle_timeout``
  frozen at ``Printing``), as klippy's virtual_sdcard pauses it. The state file keeps
  ``print_state`` as the job was; ``FIRMWARE_RESTART``/``RESTART`` or a klipper restart clear the
  shutdown and the job (``standby``).
- ``unit_transition.klipper`` ``activating``/``deactivating``: klippy is disconnected.

Run: ``python3 -m pyinfra_ratos.sim.moonraker --host 127.0.0.1 --port 7125 [--state PATH]
[--pid-file PATH]``. Stdlib only: it runs under Debian's python3 inside the virtual Pi.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import pwd
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pyinfra_ratos.sim import pistate, procs, systemctl, units
from pyinfra_ratos.sim.klippy import (  # noqa: F401 - re-exported: tests and tools read them here
    MESSAGE_READY,
    MESSAGE_MCU_CONNECT_ERROR,
    MESSAGE_SHUTDOWN,
    M112_REASON,
    MESSAGE_PROTOCOL_ERROR1,
    MESSAGE_PROTOCOL_ERROR2,
    DEFAULT_ALLOWED_SERVICES,
    PRINTER_OBJECTS_BEFORE_MCUS,
    PRINTER_OBJECTS_AFTER_MCUS,
    Klippy,
    short_mcu_name,
    mcu_object_name,
    mcu_connects,
    mcu_up_to_date,
    protocol_error_message,
    mcu_status,
    job_objects,
    derive_klippy,
)
from pyinfra_ratos.sim.hangpool import HangPool

MOONRAKER_VERSION = "v0.9.3-64-gd5ee171"
API_VERSION = [1, 5, 0]
class ServerError(Exception):
    """An API failure answered as Moonraker's ``{"error": ...}`` body."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- pure derivation


def query_objects(klippy: Klippy, wanted: dict[str, list[str] | None]) -> dict[str, Any]:
    """klippy's objects/query: unknown objects are ``{}``, attribute lists filter."""
    status: dict[str, Any] = {}
    for name, attrs in wanted.items():
        values = klippy.objects.get(name, {})
        if attrs is not None:
            values = {key: value for key, value in values.items() if key in attrs}
        status[name] = values
    return status


def status_reason(message: str) -> str:
    """The HTTP status line text tornado sends for an error message.

    tornado refuses reasons that are not a valid reason-phrase (newlines) or hold ``<``
    and sends ``Unknown`` instead; the real text then only survives in the traceback.
    """
    if "<" in message or not re.fullmatch(r"[\t\x20-\x7e\x80-\uffff]*", message):
        return "Unknown"
    return message


def error_traceback(status: int, message: str, api_error: bool) -> str:
    """A traceback shaped like tornado's ``"\\n".join(traceback.format_exception(...))``."""
    http_error = (
        "Traceback (most recent call last):\n\n"
        '  File "/home/pi/moonraker-env/lib/python3.11/site-packages/tornado/web.py",'
        " line 1790, in _execute\n    result = await result\n\n"
    )
    if not api_error:
        return (http_error + '  File "/home/pi/moonraker/moonraker/components/application.py",'
                " line 1057, in prepare\n    raise tornado.web.HTTPError(404)\n\n"
                f"tornado.web.HTTPError: HTTP {status}: {message}\n")
    return (
        "Traceback (most recent call last):\n\n"
        '  File "/home/pi/moonraker/moonraker/components/application.py", line 702,'
        " in _process_http_request\n    result = await self.api_defintion.request(\n\n"
        f"moonraker.utils.exceptions.ServerError: {message}\n\n\n"
        "The above exception was the direct cause of the following exception:\n\n\n"
        + http_error
        + '  File "/home/pi/moonraker/moonraker/components/application.py", line 708,'
        " in _process_http_request\n    raise tornado.web.HTTPError(\n\n"
        f"tornado.web.HTTPError: HTTP {status}: {message}\n"
    )


def error_body(status: int, message: str, api_error: bool = True) -> dict[str, Any]:
    return {"error": {"code": status, "message": status_reason(message),
                      "traceback": error_traceback(status, message, api_error)}}


def allowed_services(state: dict[str, Any]) -> list[str]:
    return list(state.get("allowed_services", DEFAULT_ALLOWED_SERVICES))


def service_allowed(state: dict[str, Any], name: str) -> bool:
    if "allowed_services" in state:
        return name in state["allowed_services"]
    # moonraker/components/machine.py: the asvc list, plus any klipper*/moonraker* unit
    return (name in DEFAULT_ALLOWED_SERVICES
            or re.match(r"moonraker[_-]?\d*", name) is not None
            or re.match(r"klipper[_-]?\d*", name) is not None)


def available_services(state: dict[str, Any]) -> list[str]:
    return [name for name in pistate.SERVICES if service_allowed(state, name)]


# ---------------------------------------------------------------- endpoints


def object_args(query: list[tuple[str, str]]) -> dict[str, list[str] | None]:
    """Moonraker's object parser: ``?mcu&idle_timeout=state`` -> {mcu: None, idle_timeout: [state]}."""
    return {key: (value.split(",") if value else None) for key, value in query}


def plain_args(query: list[tuple[str, str]]) -> dict[str, Any]:
    return {key.rsplit(":", 1)[0]: value for key, value in query}


def printer_info(state: dict[str, Any], klippy: Klippy) -> dict[str, Any]:
    user = state.get("klipper_user", "pi")
    home = systemctl.home_of(state)
    try:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        uid = gid = 1000
    return {
        "state": klippy.state,
        "state_message": klippy.state_message,
        "hostname": state.get("hostname", os.uname().nodename),
        "klipper_path": state.get("klipper_path", f"{home}/klipper"),
        "python_path": f"{home}/klippy-env/bin/python",
        "process_id": int(state.get("klippy_pid", 0)),
        "user_id": uid,
        "group_id": gid,
        "log_file": systemctl.klippy_log_path(state),
        "config_file": f"{home}/printer_data/config/printer.cfg",
        "software_version": state.get("host_version", "?"),
        "cpu_info": "4 core ?",
    }


def server_info(klippy: Klippy) -> dict[str, Any]:
    return {
        "klippy_connected": klippy.connected,
        "klippy_state": klippy.state,
        "components": ["application", "websockets", "internal_transport", "klippy_connection",
                       "database", "file_manager", "klippy_apis", "machine", "data_store",
                       "shell_command", "proc_stats", "job_state", "job_queue", "history",
                       "authorization", "update_manager"],
        "failed_components": [],
        "registered_directories": ["config", "logs", "gcodes", "config_examples", "docs"],
        "warnings": [],
        "websocket_count": 0,
        "moonraker_version": MOONRAKER_VERSION,
        "api_version": API_VERSION,
        "api_version_string": ".".join(str(part) for part in API_VERSION),
    }


def system_info(state: dict[str, Any]) -> dict[str, Any]:
    available = available_services(state)
    service_state = {}
    for name in available:
        active = systemctl.active_state(name, state)
        service_state[name] = {"active_state": active, "sub_state": units.SUB_STATES[active]}
    return {"system_info": {
        "provider": "systemd_cli",
        "available_services": available,
        "instance_ids": {"moonraker": "moonraker", "klipper": "klipper"},
        "service_state": service_state,
    }}


class Api:
    """Dispatches one request; holds what the handler needs after answering (restart)."""

    GET_ROUTES = {"/server/info", "/printer/info", "/printer/objects/list",
                  "/printer/objects/query", "/machine/system_info"}
    POST_ROUTES = {"/printer/objects/query", "/printer/restart", "/printer/firmware_restart",
                   "/printer/gcode/script", "/machine/services/stop",
                   "/machine/services/start", "/machine/services/restart"}

    def __init__(self, state_path: str | None) -> None:
        self.state_path = state_path
        self.after_response: list[Any] = []

    def known(self, path: str) -> bool:
        return path in self.GET_ROUTES or path in self.POST_ROUTES

    def allowed(self, method: str, path: str) -> bool:
        return path in (self.GET_ROUTES if method == "GET" else self.POST_ROUTES)

    def handle(self, path: str, query: list[tuple[str, str]], body: dict[str, Any]) -> Any:
        state = pistate.load(self.state_path)
        klippy = derive_klippy(state)
        if state.get("moonraker_fault") == "503":
            klippy = Klippy("disconnected", "Klippy Disconnected")  # Moonraker lost klippy
        if path == "/server/info":
            return server_info(klippy)
        if path == "/machine/system_info":
            return system_info(state)
        if path.startswith("/machine/services/"):
            return self.service_action(path.rsplit("/", 1)[-1], state, {**plain_args(query), **body})
        if not klippy.connected:
            raise ServerError("Klippy Host not connected", 503)
        if path == "/printer/info":
            return printer_info(state, klippy)
        if path == "/printer/objects/list":
            return {"objects": list(klippy.objects)}
        if path == "/printer/objects/query":
            wanted = body["objects"] if "objects" in body else object_args(query)
            if not isinstance(wanted, dict):
                raise ServerError("Invalid argument 'objects', expected an object")
            return {"eventtime": round(time.monotonic(), 6), "status": query_objects(klippy, wanted)}
        if path in ("/printer/restart", "/printer/firmware_restart"):
            if klippy.state == "shutdown":
                with pistate.update(self.state_path) as current:
                    systemctl.clear_shutdown(current)
            systemctl.append_klippy_log(state, systemctl.klippy_connect_lines(state))
            return "ok"
        if path == "/printer/gcode/script":
            if klippy.state != "ready":
                # klippy answers any G-Code with its state message while not ready
                raise ServerError(klippy.state_message)
            return "ok"
        raise ServerError("Not Found", 404)

    def service_action(self, action: str, state: dict[str, Any], args: dict[str, Any]) -> str:
        if "service" not in args:
            raise ServerError("No data for argument: service")
        name = str(args["service"])
        if name == "moonraker":
            if action != "restart":
                raise ServerError(f"Service action '{action}' not available for moonraker")
            self.after_response.append(restart_self)
            return "ok"
        if name in available_services(state):
            systemctl.service_action(action, name, self.state_path)
            return "ok"
        if name in allowed_services(state):
            raise ServerError(f"Service '{name}' not installed")
        raise ServerError(f"Service '{name}' not allowed")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state_path: str | None = None

    def version_string(self) -> str:
        return "TornadoServer/6.4.2"

    def do_GET(self) -> None:
        self.answer("GET")

    def do_POST(self) -> None:
        self.answer("POST")

    def do_DELETE(self) -> None:
        self.answer("DELETE")

    def answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        fault = hang_fault(self.state_path)
        if fault is not None:
            # read, never answered (or answered late, without after-response actions)
            self.close_connection = True
            self.server.hold(self.connection, fault,  # type: ignore[attr-defined]
                             lambda: http_bytes(*self.respond(method, raw)[:2]))
            return
        status, payload, api = self.respond(method, raw)
        self.send_json(status, payload)
        for action in api.after_response:
            action(self.server)

    def respond(self, method: str, raw: bytes) -> tuple[int, dict[str, Any], Api]:
        url = urlsplit(self.path)
        query = parse_qsl(url.query, keep_blank_values=True)
        api = Api(self.state_path)
        if not api.known(url.path):
            return 404, error_body(404, "Not Found", api_error=False), api
        if not api.allowed(method, url.path):
            return 405, error_body(405, "Method Not Allowed", api_error=False), api
        body: dict[str, Any] = {}
        if self.headers.get("Content-Type", "").strip().startswith("application/json") and raw:
            try:
                loaded = json.loads(raw)
                body = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                body = {}
        try:
            return 200, {"result": api.handle(url.path, query, body)}, api
        except ServerError as error:
            return error.status, error_body(error.status, str(error)), api

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        if status == 200:
            self.send_response(status)
        else:
            self.send_response(status, payload["error"]["message"])
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def hang_fault(state_path: str | None) -> float | None:
    """For the ``hang`` fault: seconds until a late answer (0: never); None: answer now."""
    try:
        state = pistate.load(state_path)
    except (OSError, ValueError):
        return None
    if state.get("moonraker_fault") != "hang":
        return None
    return float(state.get("moonraker_hang_seconds", 0) or 0)


def http_bytes(status: int, payload: dict[str, Any]) -> bytes:
    """What :meth:`Handler.send_json` sends, as bytes, for an answer sent from the hang pool."""
    data = json.dumps(payload).encode()
    reason = "OK" if status == 200 else payload["error"]["message"]
    head = (f"HTTP/1.1 {status} {reason}\r\nServer: TornadoServer/6.4.2\r\n"
            f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
            "Content-Type: application/json; charset=UTF-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + data


class Server(ThreadingHTTPServer):
    """One thread per answered request; hanging connections go to one :class:`HangPool`."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hang_pool = HangPool()
        self.handed_over: set[Any] = set()
        self.handed_lock = threading.Lock()

    def hold(self, sock: Any, seconds: float, answer: Any) -> None:
        with self.handed_lock:
            self.handed_over.add(sock)
        self.hang_pool.hold(sock, seconds or None, answer)

    def shutdown_request(self, request: Any) -> None:
        # a held connection must stay open: no FIN, no close (the pool owns it now)
        with self.handed_lock:
            if request in self.handed_over:
                self.handed_over.discard(request)
                return
        super().shutdown_request(request)


def restart_self(server: ThreadingHTTPServer) -> None:
    """Moonraker restarting itself: same pid (the pid file stays right), fresh process image."""

    # sockets are close-on-exec, so the new image binds the port afresh
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "pyinfra_ratos.sim.moonraker", *sys.argv[1:]])


def make_server(host: str, port: int, state_path: str | None) -> Server:
    handler = type("BoundHandler", (Handler,), {"state_path": state_path})
    return Server((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7125)
    parser.add_argument("--state", default=None, help="state file (default: $RATOS_SIM_STATE)")
    parser.add_argument("--pid-file", default=None)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.state)
    if args.pid_file:
        os.makedirs(os.path.dirname(args.pid_file) or ".", exist_ok=True)
        procs.write_pidfile(args.pid_file)

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    print(f"moonraker stand-in listening on {args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
        if args.pid_file and procs.pidfile_alive(args.pid_file) == os.getpid():
            os.unlink(args.pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
