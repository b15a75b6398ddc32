"""The on-Pi probe script, run locally against fake sysfs trees, files and sockets."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pyinfra_ratos.facts import remote
from pyinfra_ratos.facts.probe import SOURCE


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_boards_probe_reads_devices_interfaces_and_links_but_not_hubs(tmp_path: Path) -> None:
    usb = tmp_path / "sys/bus/usb/devices"
    for name, attrs in {
        "1-1": {"idVendor": "2109", "idProduct": "3431", "bDeviceClass": "09"},
        "1-1.3": {"idVendor": "0483", "idProduct": "df11", "bDeviceClass": "00", "product": "STM32  BOOTLOADER"},
        "1-1.1": {"idVendor": "1d50", "idProduct": "614e", "bDeviceClass": "02", "serial": "btt-kraken"},
    }.items():
        for key, value in attrs.items():
            _write(usb / name / key, value)
    _write(usb / "1-1.3/1-1.3:1.0/interface", "@Internal Flash   /0x08000000/8*128Kg")
    (usb / "1-1.1/1-1.1:1.0/tty/ttyACM0").mkdir(parents=True)
    (tmp_path / "dev/RatOS").mkdir(parents=True)
    (tmp_path / "dev/RatOS/btt-kraken").symlink_to("../ttyACM0")
    found = remote.probe_boards(str(tmp_path / "sys"), str(tmp_path / "dev"))
    assert sorted(found["devices"]) == ["1-1.1", "1-1.3"]
    assert found["devices"]["1-1.3"]["interfaces"]["1.0"]["interface"] == "@Internal Flash   /0x08000000/8*128Kg"
    assert found["devices"]["1-1.1"]["interfaces"]["1.0"]["tty"] == ["ttyACM0"]
    assert found["links"] == {"RatOS": {"btt-kraken": "ttyACM0"}, "serial/by-id": {}, "serial/by-path": {}}


def test_boards_probe_on_a_machine_without_usb_is_empty(tmp_path: Path) -> None:
    assert remote.probe_boards(str(tmp_path), str(tmp_path))["devices"] == {}


@pytest.mark.parametrize("url, endpoint", [
    ("https://github.com/Klipper3d/klipper.git", ("github.com", 443)),
    ("git@github.com:Klipper3d/klipper.git", ("github.com", 22)),
    ("ssh://git@git.example.org:2222/klipper.git", ("git.example.org", 2222)),
    ("git://git.example.org/klipper", ("git.example.org", 9418)),
    ("http://127.0.0.1:7125", ("127.0.0.1", 7125)),
    ("/srv/mirrors/klipper.git", None),
    ("", None),
])
def test_remote_endpoint_of_git_and_http_urls(url: str, endpoint: tuple[str, int] | None) -> None:
    assert remote.remote_endpoint(url) == endpoint


def test_reachability_answers_for_closed_ports_and_unresolvable_names_within_the_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        open_port = listener.getsockname()[1]
        found = remote.probe_reachability("", [f"127.0.0.1:{open_port}", "no-such-host.invalid:443"],
                                          "http://127.0.0.1:1", 2.0)
    assert found["tcp"][f"127.0.0.1:{open_port}"] is True
    assert found["tcp"]["no-such-host.invalid:443"] is False
    assert found["dns"] == {"no-such-host.invalid": False}
    assert found["moonraker_target"] == "127.0.0.1:1" and found["tcp"]["127.0.0.1:1"] is False


def _fake_bin(app: int, version: str, mcu: str) -> bytes:
    dictionary = json.dumps({"app": "Klipper", "version": version, "config": {"MCU": mcu},
                             "build_versions": "gcc"}, sort_keys=True).encode()
    # code bytes that happen to hold 78 DA must not fool the search
    return struct.pack("<II", 0x20020000, app + 0x101) + b"\x78\xda junk" + bytes(200) + zlib.compress(dictionary, 9)


def test_artifacts_probe_hashes_files_and_reads_the_dictionary_inside_the_bin(tmp_path: Path) -> None:
    build = tmp_path / "v0.13.0-3-gb846a96-0123456789ab"
    build.mkdir()
    image = _fake_bin(0x08020000, "v0.13.0-3-gb846a96", "stm32h723xx")
    (build / "klipper.bin").write_bytes(image)
    (build / "klipper.dict").write_text('{"version": "a side file that lies"}')
    (build / "config").write_text('CONFIG_LOW_LEVEL_OPTIONS=y\nCONFIG_MACH_STM32=y\nCONFIG_MACH_STM32H723=y\n'
                                  'CONFIG_MCU="stm32h723xx"\nCONFIG_STM32_FLASH_START_20000=y\n'
                                  'CONFIG_FLASH_APPLICATION_ADDRESS=0x8020000\nCONFIG_CLOCK_FREQ=400000000\n')
    (tmp_path / "stray-file").write_text("not a build")
    found = remote.probe_artifacts(str(tmp_path))
    assert list(found) == [build.name]
    entry = found[build.name]
    assert entry["files"]["klipper.bin"]["size"] == len(image)
    assert entry["image"]["dict"] == {"version": "v0.13.0-3-gb846a96", "mcu": "stm32h723xx", "build_versions": "gcc"}
    assert entry["image"]["vectors"][0] == [0, 0x20020000, 0x08020101]
    # of the resolved config, the lines that say where the image is linked
    assert entry["config"] == ["CONFIG_MACH_STM32=y", "CONFIG_MACH_STM32H723=y", 'CONFIG_MCU="stm32h723xx"',
                               "CONFIG_STM32_FLASH_START_20000=y", "CONFIG_FLASH_APPLICATION_ADDRESS=0x8020000"]


def test_the_shipped_script_prints_one_json_line_and_exits_0_on_a_bad_probe() -> None:
    done = subprocess.run([sys.executable, "-c", SOURCE, "no-such-probe"], capture_output=True, text=True)
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"error": "unknown probe 'no-such-probe'"}


def test_moonraker_probe_without_moonraker_falls_back_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "klippy.log"
    log.write_text("noise\nLoaded MCU 'mcu' 3 commands (v1 / gcc)\nmore noise\n")
    found = remote.probe_moonraker("http://127.0.0.1:1", str(log), True, False)
    assert found["info"]["status"] == 0
    assert found["log"] == ["Loaded MCU 'mcu' 3 commands (v1 / gcc)"]


class _Answers:
    """A local HTTP server (the standard library's, as the Moonraker stand-in) with fixed answers."""

    def __init__(self, routes: dict[str, tuple[int, str, bytes]]) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # as Tornado: the probe's HTTP/1.0 request still closes

            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                status, kind, body = routes.get(self.path, (404, "text/html", b"<html>404</html>"))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_http_get_answers_as_urllib_did_for_json_errors_pages_and_silence() -> None:
    big = json.dumps({"result": {"objects": ["x" * 100] * 2000}}).encode()  # > one recv
    server = _Answers({
        "/printer/info": (200, "application/json", b'{"result": {"state": "ready"}}'),
        "/printer/objects/query?mcu&webhooks=state": (200, "application/json", big),
        "/printer/objects/list": (503, "application/json", b'{"error": {"code": 503, "message": "Klippy"}}'),
        "/server/html": (200, "text/html", b"<html>not json</html>"),
    })
    try:
        assert remote._http_get(server.url + "/printer/info") == {"status": 200, "body": {"result": {"state": "ready"}}}
        assert remote._http_get(server.url + "/printer/objects/query?mcu&webhooks=state")["body"] == json.loads(big)
        assert remote._http_get(server.url + "/printer/objects/list") == {
            "status": 503, "body": {"error": {"code": 503, "message": "Klippy"}}}
        assert remote._http_get(server.url + "/nowhere") == {"status": 404, "body": None}
        assert remote._http_get(server.url + "/server/html")["status"] == 0
    finally:
        server.server.shutdown()
    assert remote._http_get("http://127.0.0.1:1/printer/info")["status"] == 0


def test_http_get_of_something_that_is_not_http_or_never_answers() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    import threading

    def garbage() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        conn.close()

    threading.Thread(target=garbage, daemon=True).start()
    assert remote._http_get(f"http://127.0.0.1:{port}/printer/info")["status"] == 0
    # accepted, never answered: within the timeout
    import time

    started = time.monotonic()
    assert remote._http_get(f"http://127.0.0.1:{port}/printer/info", timeout=0.3)["status"] == 0
    assert time.monotonic() - started < 2
    listener.close()


def test_http_get_stops_at_the_content_length_when_the_server_keeps_the_connection() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    import threading
    import time

    def keep_alive() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        body = b'{"result": {"state": "ready"}}'
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: keep-alive\r\n\r\n" + body[:10])
        time.sleep(0.05)
        conn.sendall(body[10:])
        time.sleep(3)  # never closes within the probe's timeout
        conn.close()

    threading.Thread(target=keep_alive, daemon=True).start()
    started = time.monotonic()
    assert remote._http_get(f"http://127.0.0.1:{port}/printer/info", timeout=2.0) == {
        "status": 200, "body": {"result": {"state": "ready"}}}
    assert time.monotonic() - started < 1
    listener.close()
