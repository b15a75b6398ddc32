"""The controller's side of config backups: links kept as links, size limits, streamed copies."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from pyinfra_ratos.printer.klipper_config import SAVE_CONFIG_MARKER
from pyinfra_ratos.operations import backup

SOURCE = {"machine_id": "a" * 32, "host_keys": {"ssh-ed25519": "SHA256:keyA"}}


def _tar(path: Path, files: dict[str, bytes] | None = None, links: dict[str, str] | None = None,
         raw: list[tuple[str, bytes]] | None = None) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in [*(files or {}).items(), *(raw or [])]:
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(f"./{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return str(path)


def test_symlinks_are_kept_as_links_and_never_followed(tmp_path: Path) -> None:
    folder = tmp_path / "pi-a"
    cfg = f"[printer]\n{SAVE_CONFIG_MARKER}\n#*# z = 1\n".encode()
    name, _ = backup.store_version(_tar(tmp_path / "in.tar", {"printers/mine.cfg": cfg},
                                        {"printer.cfg": "printers/mine.cfg", "secrets": "/etc/shadow",
                                         "up": "../../outside"}), str(folder), keep=5, source=SOURCE)
    version = folder / str(name)
    assert json.loads((version / backup.LINKS).read_text()) == {
        "printer.cfg": "printers/mine.cfg", "secrets": "/etc/shadow", "up": "../../outside"}
    assert not any(p.is_symlink() for p in version.rglob("*"))  # no link is made on the controller
    # a symlinked printer.cfg is read through its link, inside the version only
    assert backup.version_file(version, "printer.cfg") == version / "files/printers/mine.cfg"
    assert backup.version_file(version, "secrets") is None and backup.version_file(version, "up") is None
    assert backup.newest_calibrated(folder) == version
    assert json.loads((version / backup.IDENTITY).read_text()) == SOURCE
    # the Pi lists links the same way: the digests agree
    state = backup.parse_backup_state([
        f"file\t{line.split()[0]}\t{len(cfg)}\t./{line.split()[1]}"
        for line in (version / backup.MANIFEST).read_text().splitlines()
    ] + [f"link\t{json.dumps(['./' + k, v])}" for k, v in backup.version_links(version).items()])
    assert state["digest"] == backup.version_digest(version)


def test_a_link_is_never_written_through_even_when_a_tar_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "pi-a"
    name, _ = backup.store_version(_tar(tmp_path / "in.tar", {"ok.cfg": b"x"}, {"sub": "/etc"},
                                        raw=[("sub/passwd", b"evil"), ("../escape", b"evil")]),
                                   str(folder), keep=5)
    version = folder / str(name)
    assert sorted(p.relative_to(version / "files").as_posix() for p in (version / "files").rglob("*")) == ["ok.cfg"]
    assert not (tmp_path / "escape").exists()


def test_the_same_content_from_another_machine_is_a_new_version(tmp_path: Path) -> None:
    folder = tmp_path / "pi-a"
    first, _ = backup.store_version(_tar(tmp_path / "1.tar", {"printer.cfg": b"a"}), str(folder), 5, SOURCE)
    again, _ = backup.store_version(_tar(tmp_path / "2.tar", {"printer.cfg": b"a"}), str(folder), 5, SOURCE)
    other = {"machine_id": "b" * 32, "host_keys": {}}
    swapped, _ = backup.store_version(_tar(tmp_path / "3.tar", {"printer.cfg": b"a"}), str(folder), 5, other)
    assert first and again is None and swapped and swapped != first


def test_files_over_the_limits_are_left_out_and_named(tmp_path: Path) -> None:
    folder = tmp_path / "pi-a"
    tar = _tar(tmp_path / "in.tar", {"printer.cfg": b"p" * 10, "big.gcode": b"g" * 100, "a.cfg": b"a" * 30,
                                     "b.cfg": b"b" * 30})
    name, skipped = backup.store_version(tar, str(folder), 5, max_file=50, max_total=60)
    files = sorted(p.name for p in (folder / str(name) / "files").iterdir())
    assert files == ["a.cfg", "printer.cfg"] and set(skipped) == {"big.gcode", "b.cfg"}
    assert not Path(tar).exists()


def test_selection_keeps_printer_cfg_first_then_the_smallest() -> None:
    sizes = {"printer.cfg": 40, "video.mp4": 2 << 30, "shaper.csv": 30, "macros.cfg": 5}
    kept, skipped = backup.select_files(sizes, max_file=100, max_total=60)
    assert kept == ["macros.cfg", "printer.cfg"]
    assert skipped == {"video.mp4": "2.0 GiB, over 100 B a file", "shaper.csv": "30 B, past the backup's 60 B in all"}


def test_size_limits_come_from_host_data_and_bad_ones_are_named() -> None:
    assert backup.limits({}) == (16 * backup.MIB, 64 * backup.MIB, [])
    assert backup.limits({"config_backup_max_file_mb": 0.5, "config_backup_max_total_mb": 200})[:2] == (
        backup.MIB // 2, 200 * backup.MIB)
    *_, problems = backup.limits({"config_backup_max_file_mb": 1000, "config_backup_max_total_mb": "9"})
    assert len(problems) == 2 and "at most 64" in problems[0] and "'9'" in problems[1]


def test_the_probe_listing_parses_sizes_big_files_links_and_the_machine_id() -> None:
    state = backup.parse_backup_state([
        "machine_id\t" + "c" * 32, "dir\t/home/pi/printer_data/config", "printer_cfg",
        "file\t" + "1" * 64 + "\t12\t./printer.cfg", "big\t1073741824\t./huge.bin",
        'link\t["./macros.cfg", "shared/macros.cfg"]', "file\t" + "2" * 64 + "\t1\t./../escape",
        'link\t["./bad", ""]', "link\tnot json",
    ])
    assert state["machine_id"] == "c" * 32
    assert state["files"] == {"printer.cfg": "1" * 64}
    assert state["sizes"] == {"printer.cfg": 12, "huge.bin": 1 << 30}
    assert state["links"] == {"macros.cfg": "shared/macros.cfg"}
    assert backup.parse_backup_state(["machine_id\t" + "c" * 32, "nodir"]) == {"machine_id": "c" * 32}
    assert not backup.restore_due({"machine_id": "c" * 32})


def test_the_restore_tar_is_written_a_file_at_a_time_with_its_links(tmp_path: Path) -> None:
    folder = tmp_path / "pi-a"
    name, _ = backup.store_version(_tar(tmp_path / "in.tar", {"printers/mine.cfg": b"cfg"},
                                        {"printer.cfg": "printers/mine.cfg"}), str(folder), keep=5)
    out = io.BytesIO()
    backup.restore_tar(folder / str(name), out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["printers/mine.cfg"].isfile() and members["printer.cfg"].issym()
    assert members["printer.cfg"].linkname == "printers/mine.cfg"


def test_a_large_file_is_stored_and_restored_as_a_stream_never_whole_in_memory(tmp_path: Path) -> None:
    """300 MiB through store_version and restore_tar in a child process: its peak RSS stays far
    below the file's size (a copy in memory would be 300 MiB more)."""
    import subprocess
    import sys

    script = f"""
import io, os, resource, tarfile
from pathlib import Path
from pyinfra_ratos.operations import backup

class Zeros(io.RawIOBase):
    def __init__(self, size): self.left = size
    def readable(self): return True
    def readinto(self, buffer):
        n = min(len(buffer), self.left); buffer[:n] = bytes(n); self.left -= n; return n

size = 300 * 1024 * 1024
tmp = Path({str(tmp_path)!r})
with tarfile.open(tmp / "in.tar", "w") as tar:
    info = tarfile.TarInfo("./big.bin"); info.size = size
    tar.addfile(info, io.BufferedReader(Zeros(size), 1 << 20))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
name, skipped = backup.store_version(str(tmp / "in.tar"), str(tmp / "pi"), 5, max_file=size, max_total=size)
assert not skipped and (tmp / "pi" / name / "files/big.bin").stat().st_size == size
with open(tmp / "restore.tar", "wb") as out:
    backup.restore_tar(tmp / "pi" / name, out)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(done.stdout.strip()) < 64, done.stdout  # MiB of peak RSS added while storing 300 MiB


def test_names_from_a_pi_reach_the_terminal_without_control_characters() -> None:
    assert backup.printable("evil\x1b]2;pwned\x07.cfg") == "evil\\x1b]2;pwned\\x07.cfg"
