"""The Moonraker stand-in's fault knobs: 503 while printing, hanging, klippy shut down by M112."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.sim import knobs, pistate
from pyinfra_ratos.sim.hangpool import HangPool
from pyinfra_ratos.sim.moonraker import MESSAGE_SHUTDOWN, derive_klippy, error_body, make_server

HOST_VERSION = "v0.13.0-3-g1a2b3c4d5"
M112_MESSAGE = ("Shutdown due to M112 command\nOnce the underlying issue is corrected, use the\n"
                '"FIRMWARE_RESTART" command to reset the firmware, reload the\n'
                "config, and restart the host software.\nPrinter is shutdown\n")


def base_state(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    firmware = {"version": HOST_VERSION, "build_versions": "gcc: 12",
                "config": {"MCU": "stm32h723xx", "CLOCK_FREQ": 400000000}}
    return {
        "hostname": "vcore-01", "print_state": "printing", "print_filename": "cube.gcode",
        "services": {"klipper": "active", "moonraker": "active", "klipper-mcu": "active"},
        "allowed_services": ["klipper", "moonraker", "klipper-mcu"], "klipper_user": "pi",
        "home": str(tmp_path), "host_version": HOST_VERSION,
        "moonraker_pid_file": str(tmp_path / "moonraker.pid"),
        "klippy_log": str(tmp_path / "klippy.log"),
        "mcus": [{"name": "mcu", "present": True, "firmware": firmware}],
        **changes,
    }


class Moonraker:
    def __init__(self, server: Any, path: Path) -> None:
        self.server = server
        self.port = server.server_address[1]
        self.path = path

    def knob(self, *settings: str) -> None:
        knobs.apply(list(settings), str(self.path))

    def call(self, method: str, url: str, body: dict[str, Any] | None = None,
             timeout: float = 10) -> tuple[int, str, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, url, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            return response.status, response.reason, json.loads(response.read())
        finally:
            conn.close()


@pytest.fixture
def moonraker(tmp_path: Path) -> Iterator[Moonraker]:
    path = tmp_path / "state.json"
    pistate.save(base_state(tmp_path), str(path))
    server = make_server("127.0.0.1", 0, str(path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Moonraker(server, path)
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- 503


@pytest.mark.parametrize("url", ["/printer/info", "/printer/objects/list",
                                 "/printer/objects/query?print_stats&webhooks"])
def test_503_knob_answers_every_printer_endpoint_like_a_lost_klippy(moonraker: Moonraker, url: str) -> None:
    moonraker.knob("moonraker_fault=503")
    status, reason, data = moonraker.call("GET", url)
    assert (status, reason) == (503, "Klippy Host not connected")
    # exactly the body of a stopped klipper (error_body is what that path sends)
    assert data == error_body(503, "Klippy Host not connected")
    assert set(data["error"]) == {"code", "message", "traceback"}
    assert data["error"]["traceback"].endswith("tornado.web.HTTPError: HTTP 503: Klippy Host not connected\n")


def test_503_knob_leaves_the_print_running_and_the_machine_endpoints_up(moonraker: Moonraker) -> None:
    moonraker.knob("moonraker_fault=503")
    status, _, _ = moonraker.call("POST", "/printer/gcode/script", {"script": "G28"})
    assert status == 503
    _, _, info = moonraker.call("GET", "/server/info")
    assert (info["result"]["klippy_connected"], info["result"]["klippy_state"]) == (False, "disconnected")
    status, _, _ = moonraker.call("GET", "/machine/system_info")
    assert status == 200
    assert pistate.load(str(moonraker.path))["print_state"] == "printing"  # underneath: printing
    moonraker.knob("moonraker_fault=none")
    _, _, data = moonraker.call("GET", "/printer/objects/query?print_stats=state")
    assert data["result"]["status"]["print_stats"] == {"state": "printing"}


# ---------------------------------------------------------------- hang


def test_hang_accepts_and_never_answers_without_blocking_other_connections(moonraker: Moonraker) -> None:
    moonraker.knob("moonraker_fault=hang")
    threads = threading.active_count()
    hung = []
    for _ in range(20):
        conn = socket.create_connection(("127.0.0.1", moonraker.port), timeout=5)
        conn.sendall(b"GET /server/info HTTP/1.1\r\nHost: x\r\n\r\n")
        hung.append(conn)
    with pytest.raises(TimeoutError):
        moonraker.call("GET", "/printer/info", timeout=1)
    deadline = time.monotonic() + 5
    while len(moonraker.server.hang_pool) != 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    # the 20 raw connections are held; the client that timed out closed its own: released
    assert len(moonraker.server.hang_pool) == 20
    # the handler threads are gone: one pool thread holds them all
    assert threading.active_count() <= threads + 2
    hung[0].settimeout(0.5)
    with pytest.raises(TimeoutError):
        hung[0].recv(1)
    moonraker.knob("moonraker_fault=none")
    status, _, _ = moonraker.call("GET", "/printer/info", timeout=5)  # a new connection answers
    assert status == 200
    for conn in hung:
        conn.close()
    deadline = time.monotonic() + 5
    while len(moonraker.server.hang_pool) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(moonraker.server.hang_pool) == 0  # closed by the clients: released


def test_hang_with_seconds_answers_late_with_the_real_answer(moonraker: Moonraker) -> None:
    moonraker.knob("moonraker_fault=hang", "moonraker_hang_seconds=0.6")
    started = time.monotonic()
    status, reason, data = moonraker.call("GET", "/printer/objects/query?print_stats=state", timeout=10)
    assert time.monotonic() - started >= 0.6
    assert (status, reason) == (200, "OK")
    assert data["result"]["status"]["print_stats"] == {"state": "printing"}


def test_hang_pool_drops_the_oldest_beyond_its_limit() -> None:
    pool = HangPool(limit=2)
    pairs = [socket.socketpair() for _ in range(3)]
    for server_side, _ in pairs:
        pool.hold(server_side, None, lambda: b"")
    assert len(pool) == 2
    pairs[0][1].settimeout(2)
    assert pairs[0][1].recv(1) == b""  # the oldest was closed
    for _, client in pairs:
        client.close()


# ---------------------------------------------------------------- klippy shutdown


def test_shutdown_knob_is_klippys_m112_state(moonraker: Moonraker) -> None:
    moonraker.knob("klippy=shutdown")
    _, _, info = moonraker.call("GET", "/printer/info")
    assert (info["result"]["state"], info["result"]["state_message"]) == ("shutdown", M112_MESSAGE)
    _, _, data = moonraker.call(
        "GET", "/printer/objects/query?webhooks&print_stats=state,filename&idle_timeout=state"
        "&virtual_sdcard=is_active&pause_resume")
    status = data["result"]["status"]
    assert status["webhooks"] == {"state": "shutdown", "state_message": M112_MESSAGE}
    assert status["print_stats"] == {"state": "paused", "filename": "cube.gcode"}
    assert status["idle_timeout"] == {"state": "Printing"}
    assert status["virtual_sdcard"] == {"is_active": False}
    assert status["pause_resume"] == {"is_paused": False}
    _, _, server = moonraker.call("GET", "/server/info")
    assert server["result"]["klippy_state"] == "shutdown"
    code, reason, error = moonraker.call("POST", "/printer/gcode/script", {"script": "G28"})
    assert (code, reason, error["error"]["message"]) == (400, "Unknown", "Unknown")
    assert error["error"]["traceback"].rstrip().endswith("Printer is shutdown")
    assert "Transition to shutdown state: Shutdown due to M112 command" in (
        Path(pistate.load(str(moonraker.path))["klippy_log"]).read_text())


def test_firmware_restart_clears_the_shutdown_and_the_job(moonraker: Moonraker) -> None:
    moonraker.knob("klippy=shutdown")
    assert moonraker.call("POST", "/printer/firmware_restart")[0] == 200
    _, _, data = moonraker.call("GET", "/printer/objects/query?webhooks=state&print_stats=state")
    assert data["result"]["status"] == {"webhooks": {"state": "ready"}, "print_stats": {"state": "standby"}}


def test_shutdown_in_an_error_state_keeps_the_error_text() -> None:
    state = base_state(Path("/tmp"), klippy="shutdown", print_state="standby")
    state["mcus"][0]["present"] = False
    klippy = derive_klippy(state)
    assert klippy.state == "shutdown"
    assert klippy.state_message.startswith("mcu 'mcu': Unable to connect")
    assert MESSAGE_SHUTDOWN not in klippy.state_message


# ---------------------------------------------------------------- print start/stop


def test_print_knob_starts_and_stops_a_print(moonraker: Moonraker) -> None:
    moonraker.knob("print=stop")
    query = "/printer/objects/query?print_stats=state,filename&idle_timeout=state"
    assert moonraker.call("GET", query)[2]["result"]["status"] == {
        "print_stats": {"state": "standby", "filename": ""}, "idle_timeout": {"state": "Idle"}}
    moonraker.knob("print=start")
    assert moonraker.call("GET", query)[2]["result"]["status"] == {
        "print_stats": {"state": "printing", "filename": "benchy.gcode"},
        "idle_timeout": {"state": "Printing"}}
    moonraker.knob("state=paused")
    assert moonraker.call("GET", query)[2]["result"]["status"]["idle_timeout"] == {"state": "Ready"}


def test_bad_knobs_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    pistate.save(base_state(tmp_path), str(path))
    before = path.read_text()
    assert knobs.main(["--state", str(path), "klippy=shutdown", "moonraker_fault=502"]) == 2
    assert knobs.main(["--state", str(path), "colour=red"]) == 2
    assert knobs.main(["--state", str(path), "moonraker_hang_seconds=-1"]) == 2
    assert path.read_text() == before
