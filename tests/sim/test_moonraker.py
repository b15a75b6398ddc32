"""The Moonraker stand-in: klippy derivation from the state file, and the real HTTP endpoints."""

from __future__ import annotations

import copy
import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinfra_ratos.sim import pistate
from pyinfra_ratos.sim.moonraker import derive_klippy, make_server, query_objects, status_reason

HOST_VERSION = "v0.13.0-3-g1a2b3c4d5"
BUILD = "gcc: (15:12.2.rel1-1) 12.2.1 20221205 binutils: (2.40-2+18+b1) 2.40"


def firmware(version: str = HOST_VERSION, mcu: str = "stm32h723xx") -> dict[str, Any]:
    return {"version": version, "build_versions": BUILD,
            "config": {"MCU": mcu, "CLOCK_FREQ": 400000000}}


BASE_STATE: dict[str, Any] = {
    "hostname": "vcore-01",
    "print_state": "standby",
    "print_filename": "",
    "services": {"klipper": "active", "moonraker": "active", "klipper-mcu": "active"},
    "allowed_services": ["klipper", "moonraker", "klipper-mcu", "crowsnest"],
    "klipper_path": "/home/pi/klipper",
    "klipper_user": "pi",
    "home": "/home/pi",
    "host_version": HOST_VERSION,
    "mcus": [
        {"name": "mcu", "board": "btt-octopus-pro-h723-11", "port": "1-1.3", "present": True,
         "firmware": firmware()},
        {"name": "EBBCan", "board": "btt-ebb36-12", "port": "1-1.4", "present": True,
         "firmware": firmware(mcu="stm32g0b1xx")},
    ],
}


def state(**changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(BASE_STATE)
    result.update(changes)
    return result


# ---------------------------------------------------------------- derivation


def test_stopped_klipper_is_a_disconnected_klippy() -> None:
    klippy = derive_klippy(state(services={"klipper": "inactive"}))
    assert not klippy.connected
    assert klippy.state == "disconnected"


def test_matching_versions_are_ready_with_full_mcu_objects() -> None:
    klippy = derive_klippy(state())
    assert klippy.state == "ready"
    assert klippy.state_message == "Printer is ready"
    assert klippy.objects["mcu EBBCan"]["mcu_version"] == HOST_VERSION
    assert klippy.objects["mcu"]["mcu_constants"]["MCU"] == "stm32h723xx"
    assert "last_stats" in klippy.objects["mcu"]


def test_absent_board_is_an_unable_to_connect_error_and_an_empty_object() -> None:
    current = state()
    current["mcus"][1]["present"] = False
    klippy = derive_klippy(current)
    assert klippy.state == "error"
    assert klippy.state_message.startswith("mcu 'EBBCan': Unable to connect\nOnce the underlying")
    assert klippy.state_message.endswith("restart the host software.\nError configuring printer\n")
    assert klippy.objects["mcu EBBCan"] == {}
    assert "last_stats" not in klippy.objects["mcu"]


def test_blank_board_is_unreachable_too() -> None:
    current = state()
    current["mcus"][0]["firmware"] = None
    klippy = derive_klippy(current)
    assert klippy.state_message.startswith("mcu 'mcu': Unable to connect")
    # klippy stops at the first MCU it cannot reach, so the later ones never identify
    assert klippy.objects["mcu"] == {} and klippy.objects["mcu EBBCan"] == {}


def test_old_toolboard_firmware_is_klippys_protocol_error() -> None:
    current = state()
    current["mcus"][1]["firmware"]["version"] = "v0.12.0-0-g0d67d9c45"
    klippy = derive_klippy(current)
    assert klippy.state == "error"
    lines = klippy.state_message.split("\n")
    assert lines[0] == "MCU Protocol error"
    assert f"Your Klipper version is: {HOST_VERSION}" in lines
    updated = lines.index("MCU(s) which should be updated:")
    assert lines[updated + 1] == "EBBCan: Current version v0.12.0-0-g0d67d9c45"
    assert lines[updated + 2] == "Up-to-date MCU(s):"
    assert lines[updated + 3] == f"mcu: Current version {HOST_VERSION}"
    assert 'Once the underlying issue is corrected, use the "RESTART"' in lines
    assert klippy.objects["mcu EBBCan"]["mcu_version"] == "v0.12.0-0-g0d67d9c45"
    assert "last_stats" not in klippy.objects["mcu EBBCan"]


def test_protocol_error_says_none_when_no_mcu_is_up_to_date() -> None:
    current = state(host_version="v0.13.0-9-gffffffff")
    lines = derive_klippy(current).state_message.split("\n")
    assert lines[lines.index("Up-to-date MCU(s):") + 1] == "<none>"


def test_compatible_old_firmware_stays_ready() -> None:
    current = state()
    current["mcus"][1]["firmware"]["version"] = "v0.12.0-0-g0d67d9c45"
    current["mcus"][1]["firmware"]["protocol_compatible"] = True
    klippy = derive_klippy(current)
    assert klippy.state == "ready"
    assert klippy.objects["mcu EBBCan"]["mcu_version"] == "v0.12.0-0-g0d67d9c45"


def test_host_mcu_needs_its_service() -> None:
    current = state(services={"klipper": "active", "klipper-mcu": "inactive"})
    current["mcus"].append({"name": "host", "service": "klipper-mcu", "present": True,
                            "firmware": firmware(mcu="linux")})
    assert derive_klippy(current).state_message.startswith("mcu 'host': Unable to connect")


@pytest.mark.parametrize(("print_state", "idle", "active"), [
    ("printing", "Printing", True), ("paused", "Ready", False), ("standby", "Idle", False),
    ("complete", "Idle", False),
])
def test_job_state_drives_idle_timeout_and_sdcard(print_state: str, idle: str, active: bool) -> None:
    klippy = derive_klippy(state(print_state=print_state, print_filename="cube.gcode"))
    assert klippy.objects["print_stats"]["state"] == print_state
    assert klippy.objects["idle_timeout"]["state"] == idle
    assert klippy.objects["virtual_sdcard"]["is_active"] is active


def test_query_returns_unknown_objects_empty_and_filters_attributes() -> None:
    status = query_objects(derive_klippy(state()), {"idle_timeout": ["state"], "nope": None})
    assert status == {"idle_timeout": {"state": "Idle"}, "nope": {}}


def test_multiline_messages_get_the_unknown_status_line() -> None:
    assert status_reason("Klippy Host not connected") == "Klippy Host not connected"
    assert status_reason("MCU Protocol error\nmore") == "Unknown"


# ---------------------------------------------------------------- the HTTP server


class Client:
    def __init__(self, port: int, path: Path) -> None:
        self.port = port
        self.path = path

    def write(self, current: dict[str, Any]) -> None:
        pistate.save(current, str(self.path))

    def call(self, method: str, url: str, body: dict[str, Any] | None = None,
             ) -> tuple[int, str, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, url, json.dumps(body) if body is not None else None, headers)
        response = conn.getresponse()
        data = json.loads(response.read())
        conn.close()
        return response.status, response.reason, data


@pytest.fixture
def moonraker(tmp_path: Path) -> Iterator[Client]:
    path = tmp_path / "state.json"
    # no moonraker pid file here: system_info must not see some other Pi's moonraker
    pistate.save(state(moonraker_pid_file=str(tmp_path / "moonraker.pid"),
                       klippy_log=str(tmp_path / "klippy.log")), str(path))
    server = make_server("127.0.0.1", 0, str(path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Client(server.server_address[1], path)
    server.shutdown()
    server.server_close()


def test_server_info_reports_klippy_state(moonraker: Client) -> None:
    status, _, data = moonraker.call("GET", "/server/info")
    assert status == 200
    assert data["result"]["klippy_connected"] is True
    assert data["result"]["klippy_state"] == "ready"


def test_printer_info_has_the_host_version(moonraker: Client) -> None:
    _, _, data = moonraker.call("GET", "/printer/info")
    assert data["result"]["software_version"] == HOST_VERSION
    assert data["result"]["state"] == "ready"
    assert data["result"]["hostname"] == "vcore-01"


def test_objects_list_names_secondary_mcus_with_a_space(moonraker: Client) -> None:
    _, _, data = moonraker.call("GET", "/printer/objects/list")
    assert {"mcu", "mcu EBBCan", "print_stats", "idle_timeout", "webhooks"} <= set(
        data["result"]["objects"])


def test_query_string_form(moonraker: Client) -> None:
    _, _, data = moonraker.call(
        "GET", "/printer/objects/query?print_stats&mcu%20EBBCan&idle_timeout=state")
    status = data["result"]["status"]
    assert status["mcu EBBCan"]["mcu_constants"]["MCU"] == "stm32g0b1xx"
    assert status["idle_timeout"] == {"state": "Idle"}
    assert status["print_stats"]["state"] == "standby"
    assert isinstance(data["result"]["eventtime"], float)


def test_json_body_form(moonraker: Client) -> None:
    _, _, data = moonraker.call("POST", "/printer/objects/query",
                                {"objects": {"webhooks": None, "mcu": ["mcu_version"]}})
    assert data["result"]["status"] == {
        "webhooks": {"state": "ready", "state_message": "Printer is ready"},
        "mcu": {"mcu_version": HOST_VERSION}}


def test_every_request_reads_the_state_file_fresh(moonraker: Client) -> None:
    moonraker.write({**pistate.load(str(moonraker.path)), "print_state": "printing"})
    _, _, data = moonraker.call("GET", "/printer/objects/query?print_stats=state&idle_timeout")
    assert data["result"]["status"]["print_stats"] == {"state": "printing"}
    assert data["result"]["status"]["idle_timeout"]["state"] == "Printing"


def test_stopped_klipper_answers_503_on_printer_endpoints(moonraker: Client) -> None:
    current = pistate.load(str(moonraker.path))
    current["services"]["klipper"] = "inactive"
    moonraker.write(current)
    status, reason, data = moonraker.call("GET", "/printer/objects/query?mcu")
    assert (status, reason) == (503, "Klippy Host not connected")
    assert data["error"]["code"] == 503
    assert data["error"]["message"] == "Klippy Host not connected"
    _, _, info = moonraker.call("GET", "/server/info")
    assert info["result"]["klippy_state"] == "disconnected"


def test_protocol_error_text_only_survives_in_the_traceback(moonraker: Client) -> None:
    current = pistate.load(str(moonraker.path))
    current["mcus"][0]["firmware"]["version"] = "v0.12.0-0-g0d67d9c45"
    moonraker.write(current)
    status, reason, data = moonraker.call("POST", "/printer/gcode/script", {"script": "G28"})
    assert (status, reason) == (400, "Unknown")
    assert data["error"]["message"] == "Unknown"
    assert "MCU Protocol error" in data["error"]["traceback"]
    assert data["error"]["traceback"].rstrip().endswith(
        derive_klippy(current).state_message.rstrip())


def test_unknown_endpoint_is_404(moonraker: Client) -> None:
    status, reason, data = moonraker.call("GET", "/printer/nothing")
    assert (status, reason) == (404, "Not Found")
    assert data["error"]["message"] == "Not Found"


def test_wrong_method_is_405(moonraker: Client) -> None:
    status, _, _ = moonraker.call("GET", "/printer/firmware_restart")
    assert status == 405


def test_service_outside_the_allow_list_is_refused(moonraker: Client) -> None:
    status, reason, data = moonraker.call("POST", "/machine/services/restart",
                                          {"service": "webcamd"})
    assert (status, reason) == (400, "Service 'webcamd' not allowed")
    assert data["error"]["message"] == "Service 'webcamd' not allowed"


def test_allowed_but_missing_service_is_not_installed(moonraker: Client) -> None:
    status, _, data = moonraker.call("POST", "/machine/services/start?service=crowsnest")
    assert status == 400
    assert data["error"]["message"] == "Service 'crowsnest' not installed"


def test_stopping_klipper_through_moonraker(moonraker: Client) -> None:
    status, _, data = moonraker.call("POST", "/machine/services/stop", {"service": "klipper"})
    assert (status, data) == (200, {"result": "ok"})
    assert pistate.load(str(moonraker.path))["services"]["klipper"] == "inactive"
    _, _, info = moonraker.call("GET", "/machine/system_info")
    assert info["result"]["system_info"]["service_state"]["klipper"]["active_state"] == "inactive"


def test_moonraker_cannot_stop_itself(moonraker: Client) -> None:
    status, _, data = moonraker.call("POST", "/machine/services/stop", {"service": "moonraker"})
    assert status == 400
    assert data["error"]["message"] == "Service action 'stop' not available for moonraker"


def test_firmware_restart_answers_ok(moonraker: Client) -> None:
    status, _, data = moonraker.call("POST", "/printer/firmware_restart")
    assert (status, data) == (200, {"result": "ok"})
