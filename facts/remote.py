"""The probe every fact of this package runs on the Pi: one stdlib-only Python 3 script.

A fact's command is ``python3 -I -S -c <this file> <probe> <json args> || echo '{}'``: the script
reads sysfs, ``/dev``, git, Moonraker and the network, and prints ONE line of JSON holding raw
observations (no decisions). The facts' pure ``parse_*`` functions turn that into typed values
on the controller. Every probe catches its own failures (an ``"error"`` key instead of a
traceback) and never blocks for more than a few seconds, so the command exits 0 in every state.

Runs on whatever python3 a RatOS Pi has (3.7 on the oldest images): no walrus, no ``match``, no
runtime ``X | Y`` types. Not imported by the library: :data:`SOURCE` is its text, shipped as is.
"""

import hashlib
import json
import os
import pwd
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

# The Moonraker objects PrinterActivity reads; the bundle queries them with the MCUs in one call.
ACTIVITY_OBJECTS = "print_stats=state&idle_timeout=state&virtual_sdcard=is_active&webhooks=state"
LOG_TAIL = 8 * 1024 * 1024  # klippy.log grows without bound between rotations: read its end only


def _read(path, limit=4096):
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return None


def _link_target(path):
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


# ------------------------------------------------------------------------------ USB boards

DEVICE_ATTRS = ("idVendor", "idProduct", "manufacturer", "product", "serial", "busnum", "devnum",
                "bDeviceClass")


def probe_boards(sys_root="/sys", dev_root="/dev"):
    """Every USB device but hubs, from sysfs; the serial links udev made for them, from /dev."""
    base = os.path.join(sys_root, "bus/usb/devices")
    devices = {}
    for name in _listdir(base):
        if ":" in name or name.startswith("usb"):  # interfaces, root hubs
            continue
        path = os.path.join(base, name)
        attrs = {key: _read(os.path.join(path, key)) for key in DEVICE_ATTRS}
        if attrs["bDeviceClass"] == "09":  # hubs hold no board
            continue
        interfaces = {}
        for entry in _listdir(path):
            if not entry.startswith(name + ":"):
                continue
            intf = os.path.join(path, entry)
            interfaces[entry.split(":", 1)[1]] = {
                "interface": _read(os.path.join(intf, "interface")),  # DfuSe: the alt-0 memory map
                "class": _read(os.path.join(intf, "bInterfaceClass")),
                "tty": _listdir(os.path.join(intf, "tty")),
                "net": _listdir(os.path.join(intf, "net")),
            }
        devices[name] = {"attrs": attrs, "interfaces": interfaces}
    links = {}
    for directory in ("serial/by-id", "serial/by-path", "RatOS"):
        folder = os.path.join(dev_root, directory)
        links[directory] = {entry: _link_target(os.path.join(folder, entry)) for entry in _listdir(folder)}
    return {"devices": devices, "links": links}


# ------------------------------------------------------------------------------ ~/klipper

def _run(argv, cwd=None, timeout=10):
    try:
        done = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, universal_newlines=True)
    except (OSError, subprocess.SubprocessError) as error:
        return {"rc": -1, "out": "", "err": str(error)}
    return {"rc": done.returncode, "out": done.stdout.strip(), "err": done.stderr.strip()[-500:]}


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def probe_klipper(path):
    path = os.path.expanduser(path)
    result = {"path": path, "exists": os.path.isdir(path), "ssh_user": _user_name(os.geteuid()),
              # what a host MCU is built for: the kernel's machine and this python's pointer size
              # (a 32-bit Raspberry Pi OS boots a 64-bit kernel on a Pi 4: aarch64 + 32 = armhf)
              "machine": _run(["uname", "-m"]).get("out", ""), "pointer_bits": struct.calcsize("P") * 8}
    if not result["exists"]:
        return result
    result["owner"] = _user_name(os.stat(path).st_uid)
    result["venv"] = os.path.exists(os.path.join(os.path.dirname(path), "klippy-env", "bin", "python"))
    describe = ["describe", "--always", "--tags", "--long", "--dirty"]
    # Klipper's own command, as this user: git refuses a checkout someone else owns, as it does
    # for klippy and the firmware build, and the version becomes "?".
    result["describe"] = _run(["git", "-C", path] + describe)
    # The tree itself, whoever owns it: safe.directory is honoured on the command line. When
    # git worked as this user, the trusted describe is the same answer: one process fewer.
    trusted = ["git", "-c", "safe.directory=*", "-C", path]
    ok = result["describe"]["rc"] == 0
    result["describe_trusted"] = result["describe"] if ok else _run(trusted + describe)
    read = _git_files(path)
    if read is not None:  # what the two git commands below would print, from the files they read
        for key, value in zip(("commit", "branch", "remote_url"), read):
            result[key] = {"rc": 0, "out": value, "err": ""}
        return result
    heads = _run(trusted + ["rev-parse", "HEAD", "--abbrev-ref", "HEAD"])
    lines = heads["out"].splitlines() if heads["rc"] == 0 else []
    for index, key in enumerate(("commit", "branch")):
        if len(lines) == 2:
            result[key] = {"rc": 0, "out": lines[index].strip(), "err": ""}
        else:
            result[key] = {"rc": heads["rc"] or 1, "out": "", "err": heads["err"]}
    result["remote_url"] = _run(trusted + ["config", "--get", "remote.origin.url"])
    return result


def _is_sha(text):
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


def _packed_refs(git_dir):
    refs = {}
    for line in (_read(os.path.join(git_dir, "packed-refs"), 1 << 22) or "").splitlines():
        fields = line.split(" ")
        if len(fields) == 2 and _is_sha(fields[0]):
            refs[fields[1]] = fields[0]
    return refs


def _loose_ref(git_dir, ref):
    value = _read(os.path.join(git_dir, ref), 128)
    return value.strip() if value is not None else None


def _git_files(path):
    """(HEAD's commit, ``rev-parse --abbrev-ref HEAD``, ``config --get remote.origin.url``) read
    from ``.git`` itself: two git processes fewer per probe (each ~2-3 ms of a Pi's CPU). None
    whenever the layout is not the plain one git's answer is sure to equal (a worktree's .git
    file, an unborn or ambiguous branch, a symbolic ref, a config with includes or quoting, no
    origin URL): git is asked then."""
    git_dir = os.path.join(path, ".git")
    head = _read(os.path.join(git_dir, "HEAD"), 4096) if os.path.isdir(git_dir) else None
    if head is None:
        return None
    head = head.strip()
    packed = None
    if _is_sha(head):
        commit, branch = head, "HEAD"
    elif head.startswith("ref: refs/heads/"):
        ref = head[len("ref: "):]
        branch = ref[len("refs/heads/"):]
        commit = _loose_ref(git_dir, ref)
        if commit is None:
            packed = _packed_refs(git_dir)
            commit = packed.get(ref)
        if commit is None or not _is_sha(commit):
            return None
        # --abbrev-ref says heads/<branch> when another ref has that short name
        packed = _packed_refs(git_dir) if packed is None else packed
        for other in ("refs/" + branch, "refs/tags/" + branch, "refs/remotes/" + branch,
                      "refs/remotes/" + branch + "/HEAD"):
            if other in packed or os.path.lexists(os.path.join(git_dir, other)):
                return None
    else:
        return None
    url = _origin_url(_read(os.path.join(git_dir, "config"), 1 << 16))
    return (commit, branch, url) if url else None


def _origin_url(config):
    """remote.origin.url from a plain config file (the last one, as ``git config --get``), or None."""
    if config is None:
        return None
    url, section = None, None
    for line in config.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or line[1:].lower().startswith("include"):
                return None
            section = line[1:-1].strip()
            if section.lower().startswith("remote.") or section.lower() == "remote":
                return None  # the old [remote.origin] spelling
            continue
        key, sep, value = line.partition("=")
        if section is None or key.strip().lower() != "url" or not section.lower().startswith("remote "):
            continue
        if section[len("remote "):].strip() != '"origin"':
            continue
        value = value.strip()
        if not sep or not value or any(c in value for c in '"\\;#'):
            return None  # quoting, escapes, comments: git's own parser
        url = value
    return url


# ------------------------------------------------------------------------------ Moonraker

def _http_get(url, timeout=2.0):
    """(HTTP status, decoded JSON body); status 0 when nothing answered (or not with JSON on 2xx).

    Plain HTTP/1.0 over a socket: Moonraker is local and answers HTTP/1.0 with the whole body and
    a close (no chunks, no redirects for its API), and urllib's import alone costs a Pi ~20 ms
    of the probe's ~65. Other schemes (https) go through urllib.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http":
        return _urllib_get(url, timeout)
    path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    request = "GET %s HTTP/1.0\r\nHost: %s\r\nAccept: application/json\r\n\r\n" % (path, parts.netloc)
    deadline = time.monotonic() + timeout
    received = b""
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as conn:
            conn.sendall(request.encode("latin-1"))
            while not _complete(received):  # a server that keeps the connection open anyway
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                data = conn.recv(65536)
                if not data:
                    break
                received += data
    except Exception as failure:  # refused, timed out, bad address: nothing answered
        return {"status": 0, "body": None, "error": str(failure)}
    head, separator, payload = received.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not separator or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") \
            or not status_line[1].isdigit():
        return {"status": 0, "body": None, "error": "not an HTTP answer"}
    status = int(status_line[1])
    try:
        body = json.loads(payload.decode("utf-8"))
    except ValueError as failure:
        if 200 <= status < 300:  # a success that is not JSON is not Moonraker
            return {"status": 0, "body": None, "error": str(failure)}
        body = None  # an error page
    return {"status": status, "body": body}


def _complete(received):
    """Whether an answer holds its whole body by its Content-Length (without one: at close)."""
    head, separator, payload = received.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(payload) >= int(value.strip())
    return False


def _urllib_get(url, timeout):
    from urllib import error, request

    opener = request.build_opener(request.ProxyHandler({}))  # Moonraker is local: never via a proxy
    try:
        with opener.open(url, timeout=timeout) as answer:
            return {"status": answer.status, "body": json.loads(answer.read().decode("utf-8"))}
    except error.HTTPError as failure:
        try:
            body = json.loads(failure.read().decode("utf-8"))
        except Exception:  # an error page that is not JSON
            body = None
        return {"status": failure.code, "body": body}
    except Exception as failure:  # refused, timed out, or not HTTP at all: nothing answered
        return {"status": 0, "body": None, "error": str(failure)}


def _klippy_log(path):
    """The lines of klippy.log the MCU fallback needs, in order, from the end of the file."""
    try:
        with open(os.path.expanduser(path), "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - LOG_TAIL))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    wanted = ("Loaded MCU '", "MCU '", "Git version: ", "Start printer at ")
    return [line for line in text.splitlines() if line.startswith(wanted)]


def _service_state(name):
    # "inactive"/"failed" mean nothing runs; "" when systemctl itself is missing
    return _run(["systemctl", "is-active", name], timeout=5)["out"]


def probe_moonraker(url, log_path, with_mcus=True, with_activity=True):
    """Moonraker's answers in at most three local calls; klippy.log when it cannot name the MCUs."""
    url = url.rstrip("/")
    result = {"info": _http_get(url + "/printer/info")}
    if result["info"]["status"] == 200:  # else Moonraker is down (0) or klippy is not connected (503)
        parts = [ACTIVITY_OBJECTS] if with_activity else []
        if with_mcus:
            result["list"] = _http_get(url + "/printer/objects/list")
            objects = ((result["list"].get("body") or {}).get("result") or {}).get("objects") or []
            parts = [o.replace(" ", "%20") for o in objects if o == "mcu" or o.startswith("mcu ")] + parts
        if parts:
            result["query"] = _http_get(url + "/printer/objects/query?" + "&".join(parts))
    if with_mcus and result["info"]["status"] != 200:
        result["log"] = _klippy_log(log_path)
    if with_activity and (result.get("query") or {}).get("status") != 200:
        result["klipper_service"] = _service_state("klipper")
    if with_activity:
        result["locks"] = held_locks()
    return result


LOCK_DIR = "/run/pyinfra-ratos"


def held_locks(lock_dir=LOCK_DIR):
    """The printer agent's locks another process holds (pyinfra_ratos.firmware.agent.held_locks):
    a run is updating this printer, so the printer is not idle for anyone else."""
    import fcntl

    held = []
    for name in _listdir(lock_dir):
        try:
            fd = os.open(os.path.join(lock_dir, name), os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            try:
                info = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
            except ValueError:
                info = {}
            held.append({"lock": name, "pid": info.get("pid"), "what": info.get("what")})
        finally:
            os.close(fd)
    return held


# ------------------------------------------------------------------------------ network

def _default_route():
    for line in (_read("/proc/net/route", 1 << 16) or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            return True
    for line in (_read("/proc/net/ipv6_route", 1 << 16) or "").splitlines():
        fields = line.split()
        if len(fields) > 9 and fields[0] == "0" * 32 and fields[1] == "00" and fields[9] != "lo":
            return True
    return False


def _in_background(results, key, func, *args):
    def run():
        try:
            results[key] = func(*args)
        except Exception as failure:  # one slow or failing check must not sink the others
            results[key] = str(failure)
    thread = threading.Thread(target=run)
    thread.daemon = True
    thread.start()
    return thread


def _resolve(name):
    return bool(socket.getaddrinfo(name, None))


def _connect(host, port, timeout):
    with socket.create_connection((host, int(port)), timeout=timeout):
        return True


def probe_network(targets, names, timeout=3.0):
    """Default route, DNS for ``names``, TCP to every "host:port" of ``targets``, within ``timeout``."""
    results = {}
    threads = [_in_background(results, "dns " + name, _resolve, name) for name in names]
    for target in targets:
        host, _, port = target.rpartition(":")
        threads.append(_in_background(results, "tcp " + target, _connect, host, port, timeout))
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {
        "default_route": _default_route(),
        "dns": {name: results.get("dns " + name) is True for name in names},
        "tcp": {target: results.get("tcp " + target) is True for target in targets},
    }


# ------------------------------------------------------------------------------ firmware files

IMAGE_FILES = ("klipper.bin", "klipper.uf2", "klipper.elf")
# the resolved config's lines that say where an image is linked (kconfig.application_address)
LINK_SYMBOLS = ("CONFIG_MCU=", "CONFIG_MACH_", "CONFIG_FLASH_APPLICATION_ADDRESS=", "CONFIG_STM32_FLASH_START_")


def _uf2_image(data):
    blocks = []
    for offset in range(0, len(data) - 511, 512):
        magic0, magic1, flags, address, length = struct.unpack_from("<5I", data, offset)
        if (magic0, magic1) == (0x0A324655, 0x9E5D5157) and not flags & 1 and length <= 476:
            blocks.append((address, data[offset + 32:offset + 32 + length]))
    return _flatten(blocks)


def _elf_image(data):
    # 32-bit (MCUs, armhf host MCU) or 64-bit (arm64 host MCU), little-endian
    if data[:4] != b"\x7fELF" or data[4:6] not in (b"\x01\x01", b"\x02\x01"):
        return None, b""
    wide = data[4] == 2
    phoff, = struct.unpack_from("<Q" if wide else "<I", data, 32 if wide else 28)
    phentsize, phnum = struct.unpack_from("<HH", data, 54 if wide else 42)
    segments = []
    for index in range(phnum):
        at = phoff + index * phentsize
        if wide:
            kind, _flags, offset, _vaddr, paddr, size = struct.unpack_from("<IIQQQQ", data, at)
        else:
            kind, offset, _vaddr, paddr, size = struct.unpack_from("<5I", data, at)
        if kind == 1 and size:
            segments.append((paddr, data[offset:offset + size]))
    return _flatten(segments)


def _flatten(segments):
    if not segments:
        return None, b""
    segments.sort()
    base, image = segments[0][0], bytearray()
    for address, chunk in segments:
        image[address - base:address - base + len(chunk)] = chunk
    return base, bytes(image)


def _dictionary(image):
    start = image.find(b"\x78\xda")
    while start >= 0:
        inflater = zlib.decompressobj()
        try:
            decoded = json.loads(inflater.decompress(image[start:]).decode("utf-8"))
            if inflater.eof and isinstance(decoded, dict) and decoded.get("app") == "Klipper":
                return decoded
        except (zlib.error, ValueError):
            pass
        start = image.find(b"\x78\xda", start + 1)
    return None


def _image_facts(name, data):
    base, image = None, data
    if name.endswith(".uf2"):
        base, image = _uf2_image(data)
    elif name.endswith(".elf"):
        base, image = _elf_image(data)
    found = {"base": base, "size": len(image), "vectors": []}
    for offset in (0, 0x100):  # RP2040 images without bootloader start with the 256-byte boot2
        if len(image) >= offset + 8:
            found["vectors"].append([offset] + list(struct.unpack_from("<II", image, offset)))
    dictionary = _dictionary(image)
    if dictionary is not None:
        found["dict"] = {"version": dictionary.get("version"),
                         "build_versions": dictionary.get("build_versions"),
                         "mcu": (dictionary.get("config") or {}).get("MCU")}
    return found


def probe_artifacts(directory):
    directory = os.path.expanduser(directory)
    result = {}
    for identity in _listdir(directory):
        folder = os.path.join(directory, identity)
        if not os.path.isdir(folder):
            continue
        files, images, linked = {}, {}, None
        for name in _listdir(folder):
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError:  # a directory, or unreadable: not part of the build
                continue
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            if name in IMAGE_FILES:
                images[name] = data
            elif name == "config":  # the resolved config: where the image is linked
                linked = [line for line in data.decode("utf-8", "replace").splitlines()
                          if line.startswith(LINK_SYMBOLS)]
        image = None
        for name in IMAGE_FILES:  # the file a board is flashed with first
            if name in images:
                image = dict(_image_facts(name, images[name]), file=name)
                break
        result[identity] = {"path": folder, "files": files, "image": image, "config": linked}
    return result


# ------------------------------------------------------------------------------ config folder
# The lines ConfigBackupState and PrinterFiles parse (operations/backup.py, facts/printer_files.py):
# PrinterFiles' as GNU stat, sha256sum, df -Pk and base64 print them; the backup's its own (sizes,
# symlinks, the machine-id).


def _config_dir(path):
    """The folder as ``cd`` then ``pwd`` name it (the logical path), or None when it is missing."""
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(os.environ.get("PWD") or os.getcwd(), path)
    return os.path.normpath(path) if os.path.isdir(path) else None


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _lines(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().split(b"\n")
    except OSError:
        return []


def _backup_entries(root, exclude_dirs, exclude_names):
    """``find . ( -path ./D -o -name N ) -prune -o ( -type f -o -type l ) -print0 | LC_ALL=C sort -z``
    as (rel, lstat result): regular files and symlinks, never following a link (a linked folder is
    one entry, not descended into)."""
    import fnmatch
    import stat

    found = []
    pending = ["."]
    while pending:
        rel = pending.pop()
        try:
            names = os.listdir(os.path.join(root, rel))
        except OSError:
            continue
        for name in names:
            child = rel + "/" + name
            if any(fnmatch.fnmatchcase(child, "./" + d) for d in exclude_dirs) \
                    or any(fnmatch.fnmatchcase(name, n) for n in exclude_names):
                continue
            try:
                meta = os.lstat(os.path.join(root, child))
            except OSError:
                continue
            if stat.S_ISDIR(meta.st_mode):
                pending.append(child)
            elif stat.S_ISREG(meta.st_mode) or stat.S_ISLNK(meta.st_mode):
                found.append((child, meta))
    return sorted(found, key=lambda entry: os.fsencode(entry[0]))


def probe_backup_state(config_dir, exclude_dirs, exclude_names, save_marker, initial_include, hash_limit=None):
    """The folder as a backup sees it: ``file<TAB>sha256<TAB>size<TAB>./rel`` for a regular file,
    ``big<TAB>size<TAB>./rel`` for one over ``hash_limit`` bytes (never read: no backup takes it),
    ``link<TAB>["./rel", "target"]`` for a symlink (its target as text, never followed); and the
    Pi's machine-id, even without the folder (the printer's identity)."""
    import stat

    machine_id = _read("/etc/machine-id", 64)
    out = ["machine_id\t" + (machine_id or "").strip()]
    root = _config_dir(config_dir)
    if root is None:
        return out + ["nodir"]
    out.append("dir\t" + root)
    printer_cfg = os.path.join(root, "printer.cfg")
    if os.path.isfile(printer_cfg):
        out.append("printer_cfg")
        lines = _lines(printer_cfg)
        if save_marker.encode() in lines:
            out.append("save_config")
        if any(line.startswith(("[include %s]" % initial_include).encode()) for line in lines):
            out.append("initial")
    for rel, meta in _backup_entries(root, exclude_dirs, exclude_names):
        path = os.path.join(root, rel)
        if stat.S_ISLNK(meta.st_mode):
            try:
                out.append("link\t" + json.dumps([rel, os.readlink(path)]))
            except OSError:
                pass
            continue
        if "\n" in rel or "\\" in rel:
            continue  # sha256sum escapes such names ("\" lines): never backed up
        if hash_limit is not None and meta.st_size > hash_limit:
            out.append("big\t%d\t%s" % (meta.st_size, rel))
            continue
        try:
            out.append("file\t%s\t%d\t%s" % (_sha256_file(path), meta.st_size, rel))
        except OSError:
            continue  # unreadable: sha256sum says so on stderr and prints no line
    return out


def _owner(uid, gid):
    import grp

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = "UNKNOWN"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = "UNKNOWN"
    return user, group


def probe_printer_files(config_dir, files, read, includes, max_text):
    import base64

    root = _config_dir(config_dir)
    if root is None:
        return ["nodir"]
    try:
        fs = os.statvfs(root)
        free = str(fs.f_bavail * fs.f_frsize // 1024)
    except OSError:
        free = ""
    out = ["dir\t%s\t%s" % (root, free)]
    for name in files:
        if not name:
            continue
        path = os.path.join(root, name)
        try:
            meta = os.lstat(path) if os.path.isfile(path) else None  # stat -c without -L: a link's own
        except OSError:
            meta = None
        if meta is None:
            out.append("missing\t" + name)
            continue
        try:
            sha = _sha256_file(path)
        except OSError:
            sha = ""  # unreadable: exists, content unknown (as `sha256sum < file` failing)
        user, group = _owner(meta.st_uid, meta.st_gid)
        out.append("file\t%s\t%o %s %s %d\t%s" % (name, meta.st_mode & 0o7777, user, group, meta.st_size, sha))
    for name in read:
        path = os.path.join(root, name)
        try:
            if os.path.isfile(path) and os.lstat(path).st_size <= max_text:
                with open(path, "rb") as handle:
                    out.append("text\t%s\t%s" % (name, base64.b64encode(handle.read()).decode("ascii")))
        except OSError:
            continue
    for name in includes:
        if name:
            out.append("include\t%s\t%d" % (name, os.path.exists(os.path.join(root, name))))
    return out


def probe_config_state(args):
    """The config folder as the backup (``backup``) and the config operations (``files``) read it:
    each part only when its arguments are given."""
    result = {}
    if "backup" in args:
        backup = args["backup"]
        result["backup"] = _guarded(probe_backup_state, args["config_dir"], backup["exclude_dirs"],
                                    backup["exclude_names"], backup["save_marker"], backup["initial_include"],
                                    backup.get("hash_limit"))
    if "files" in args:
        files = args["files"]
        result["files"] = _guarded(probe_printer_files, args["config_dir"], files["files"], files["read"],
                                   files["includes"], files["max_text"])
    return result


# ------------------------------------------------------------------------------ system (provision)

def _timezone():
    # pyinfra's Timezone: readlink -f /etc/localtime | sed 's|.*/zoneinfo/||'
    path = os.path.realpath("/etc/localtime")
    marker = path.rfind("/zoneinfo/")
    return path[marker + len("/zoneinfo/"):] if marker >= 0 else path


def _file_state(path):
    """A file as files.put compares it: sha1, mode, owner and group; None when it is not a file."""
    try:
        meta = os.lstat(path)
    except OSError:
        return None
    import stat

    if not stat.S_ISREG(meta.st_mode):
        return None
    user, group = _owner(meta.st_uid, meta.st_gid)
    try:
        with open(path, "rb") as handle:
            sha1 = hashlib.sha1(handle.read()).hexdigest()
    except OSError:
        sha1 = ""
    return {"sha1": sha1, "mode": "%o" % (meta.st_mode & 0o7777), "user": user, "group": group}


def probe_system(args):
    """What a provision decides its system steps from: hostname, timezone, the zone file asked for,
    the dpkg state of the packages it wants, its units (``systemctl show``) and its files."""
    packages = list(args.get("packages", []))
    listed = _run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Package}\n"] + packages) if packages else None
    installed = {}
    for line in (listed or {}).get("out", "").splitlines():
        abbrev, _, name = line.partition("\t")
        installed[name.split(":")[0]] = abbrev.strip()
    units = list(args.get("units", []))
    shown = _run(["systemctl", "show", "--all", "--property", "Id", "--property", "SubState", "--property",
                  "UnitFileState"] + units) if units else {"rc": 0, "out": "", "err": ""}
    zone = args.get("zone") or ""
    return {
        "hostname": os.uname()[1],
        "timezone": _timezone(),
        "zone_file": bool(zone) and os.path.isfile(zone),
        "packages": installed,
        "systemd": shown["out"].splitlines(),
        "files": {path: _file_state(path) for path in args.get("files", [])},
    }


# ------------------------------------------------------------------------------ entry point

def _guarded(func, *args):
    try:
        return func(*args)
    except Exception as failure:  # a probe bug must leave the others' answers intact
        return {"error": "%s: %s" % (type(failure).__name__, failure)}


def probe_audit(args):
    """Everything a fleet audit needs, in one process: boards, checkout, MCUs, activity, network."""
    klipper = _guarded(probe_klipper, args["klipper_path"])
    remote = (klipper.get("remote_url") or {}).get("out", "") if isinstance(klipper, dict) else ""
    moonraker = _guarded(probe_moonraker, args["moonraker_url"], args["klippy_log"])
    return {
        "boards": _guarded(probe_boards),
        "klipper": klipper,
        "moonraker": moonraker,
        "can": _guarded(probe_can, args.get("can") or {}, moonraker) if isinstance(moonraker, dict) else {},
        "network": _guarded(probe_reachability, remote, args.get("hosts", []), args["moonraker_url"],
                            args.get("timeout", 3.0)),
    }


# ------------------------------------------------------------------------------ CAN
# canbus.py (pyinfra_ratos.firmware) precedes this file in the shipped probe (facts.probe.SOURCE)


def _config_sections(config_dir):
    """{section: {option: value}} of printer.cfg and the files it includes (one level, no globs)."""
    base = os.path.expanduser(config_dir)
    sections, files = {}, ["printer.cfg"]
    seen = set()
    while files:
        name = files.pop(0)
        path = os.path.normpath(os.path.join(base, name))
        if path in seen or not path.startswith(base.rstrip("/") + "/") or len(seen) > 32:
            continue
        seen.add(path)
        text = _read(path, 1024 * 1024) or ""
        current = None
        for line in text.split("\n"):
            stripped = line.split("#", 1)[0].strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                current = " ".join(stripped[1:-1].split())
                if current.startswith("include ") and not any(c in current for c in "*?["):
                    files.append(current[8:].strip())
                    current = None
                else:
                    sections.setdefault(current, {})
            elif current and ":" in stripped and not line[:1].isspace():
                key, _, value = stripped.partition(":")
                sections[current][key.strip()] = value.strip()
    return sections


def _can_busy(moonraker):
    """Printing, paused or not positively idle: no query on the bus (the gate's rule, kept simple)."""
    query = moonraker.get("query") or {}
    status = ((query.get("body") or {}).get("result") or {}).get("status") if query.get("status") == 200 else None
    if not isinstance(status, dict):
        return moonraker.get("klipper_service") not in ("inactive", "failed")
    job = (status.get("print_stats") or {}).get("state")
    return job in ("printing", "paused") or (status.get("idle_timeout") or {}).get("state") == "Printing"


def probe_can(args, moonraker):
    """The printer's CAN: its interface, the nodes its config expects, which of them klippy talks
    to, and (only when it is safe: can_discovery_refusal) which unassigned nodes answer a query."""
    nodes = []
    for section, options in sorted(_config_sections(args.get("config_dir", "~/printer_data/config")).items()):
        uuid = options.get("canbus_uuid", "").lower()
        if (section == "mcu" or section.startswith("mcu ")) and uuid:
            nodes.append({"section": section, "uuid": uuid,
                          "interface": options.get("canbus_interface") or args.get("interface") or "can0"})
    for extra in args.get("uuids") or []:
        if extra.lower() not in [n["uuid"] for n in nodes]:
            nodes.append({"section": None, "uuid": extra.lower(), "interface": args.get("interface") or "can0"})
    if not nodes:
        return {}
    names = sorted(set(n["interface"] for n in nodes))
    result = {"interfaces": dict((name, can_interface(name)) for name in names), "nodes": nodes}
    query = moonraker.get("query") or {}
    status = ((query.get("body") or {}).get("result") or {}).get("status") if query.get("status") == 200 else {}
    status = status if isinstance(status, dict) else {}
    for node in nodes:
        node["mcu_version"] = (status.get(node["section"] or "") or {}).get("mcu_version")
    result["queries"] = {}
    for name in names:
        unaccounted = [n["uuid"] for n in nodes if n["interface"] == name and not n["mcu_version"]]
        if not unaccounted:
            continue
        refusal = can_discovery_refusal(_can_busy(moonraker), unaccounted)
        if refusal is None and result["interfaces"][name].get("state") != "up":
            refusal = "the interface is not up"
        entry = {"sent": refusal is None, "refusal": refusal, "found": []}
        if refusal is None:
            try:
                bus = CanBus(can_open(name))
                try:
                    entry["found"] = bus.query_unassigned(float(args.get("window", 1.0)))
                finally:
                    bus.close()
            except (CanError, OSError) as failure:
                entry.update(sent=False, refusal="the bus could not be opened: %s" % failure)
        result["queries"][name] = entry
    return result


def probe_reachability(remote_url, hosts, moonraker_url, timeout):
    targets, names = [], []
    remote = remote_endpoint(remote_url)
    for host, port in ([remote] if remote else []) + [split_target(h) for h in hosts]:
        if "%s:%s" % (host, port) not in targets:
            targets.append("%s:%s" % (host, port))
        if not _is_address(host) and host not in names:
            names.append(host)
    moonraker = remote_endpoint(moonraker_url)
    moonraker_target = "%s:%s" % moonraker if moonraker else ""
    checked = probe_network(targets + ([moonraker_target] if moonraker_target not in targets else []),
                            names, timeout)
    return dict(checked, remote_url=remote_url, remote="%s:%s" % remote if remote else "",
                targets=targets, moonraker_target=moonraker_target)


def split_target(text):
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return host.strip("[]"), int(port)
    return text.strip("[]"), 443


def remote_endpoint(url):
    """(host, port) a git or HTTP URL connects to; None for local paths."""
    url = (url or "").strip()
    defaults = {"https": 443, "http": 80, "git": 9418, "ssh": 22, "git+ssh": 22, "ssh+git": 22}
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme not in defaults:
            return None
        hostport = rest.split("/", 1)[0].rsplit("@", 1)[-1]
        host, sep, port = hostport.rpartition(":")
        if sep and port.isdigit():
            return host.strip("[]"), int(port)
        return hostport.strip("[]"), defaults[scheme]
    if ":" in url and "/" not in url.split(":", 1)[0]:  # scp-like: git@github.com:Klipper3d/klipper
        return url.split(":", 1)[0].rsplit("@", 1)[-1], 22
    return None


def _is_address(host):
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except (OSError, ValueError):
            continue
    return False


def main(argv):
    probe, args = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    if probe == "boards":
        result = probe_boards()
    elif probe == "klipper":
        result = probe_klipper(args["path"])
    elif probe == "moonraker":
        result = probe_moonraker(args["url"], args.get("klippy_log", ""), args.get("mcus", True),
                                 args.get("activity", True))
    elif probe == "network":
        remote = ""
        if args.get("klipper_path"):
            remote = _run(["git", "-c", "safe.directory=*", "-C", os.path.expanduser(args["klipper_path"]),
                           "config", "--get", "remote.origin.url"])["out"]
        result = probe_reachability(remote, args.get("hosts", []), args["moonraker_url"],
                                    args.get("timeout", 3.0))
    elif probe == "artifacts":
        result = probe_artifacts(args["directory"])
    elif probe == "audit":
        result = probe_audit(args)
    elif probe == "can":
        result = probe_can(args["can"], probe_moonraker(args["moonraker_url"], args.get("klippy_log", "")))
    elif probe == "config":
        result = probe_config_state(args)
    elif probe == "update":
        result = dict(probe_config_state(args["config"]), audit=probe_audit(args["audit"]))
    elif probe == "provision":
        result = dict(probe_config_state(args["config"]), audit=probe_audit(args["audit"]),
                      system=_guarded(probe_system, args["system"]))
    else:
        result = {"error": "unknown probe %r" % probe}
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception as failure:  # still one line of JSON, still exit 0
        sys.stdout.write(json.dumps({"error": "%s: %s" % (type(failure).__name__, failure)}) + "\n")
