#!/usr/bin/env python3
"""The "compiler" of the stand-in Klipper checkout: python3 stdlib only, well under a second.

Subcommands (called by the Makefile, from the top of the checkout):
  dict CONFIG OUT/klipper.dict SOURCES...  data dictionary from the sources' DECL_* lines
  link CONFIG OUT/klipper.dict OUT/klipper.elf  the firmware image as an ELF32 file
  bin  klipper.elf klipper.bin            the loadable bytes (like objcopy -O binary)
  uf2  klipper.elf klipper.uf2            RP2040 UF2 blocks (family 0xe48bff56)
  hex  klipper.elf klipper.elf.hex        Intel HEX (AVR)

Image layout (at the application address APP), shared with the USB board emulator:
  u32 initial stack pointer (top of RAM), u32 reset vector, deterministic "code" filler seeded
  by (version, resolved config text), zlib.compress(klipper.dict, 9), zero padding to 8.
  As in real Klipper images, the reset handler lies deep in the code, 30-32 KiB into the image
  (stable per MCU): at it the 8 bytes "KRST" + u32 its own linked address (thumb bit clear), which
  the emulator checks to tell whether an image starts where it was flashed.
  The filler never contains the bytes 78 DA nor "KRST", so the first zlib header in a file is the
  dict's and the only handler mark is the real one.
A Linux build is an ELF for the compiler's CPU: CROSS_PREFIX (arm-linux-gnueabihf-: ARM ELF32
hard-float; aarch64-linux-gnu-: AArch64 ELF64), else the machine's own (`uname -m`).
klipper.elf carries debug strings naming the build directories (as -ggdb3 does) after its
segments, and a Linux build a GNU build id computed over the whole file (as Debian's ld does):
two builds of one tree and config in different directories differ there and only there.
The version follows Klipper's rules: `git describe --always --tags --long --dirty`, and any
unclean build ("dirty", no git, git refusing to run) gets "-YYYYMMDD_HHMMSS-<hostname>".
"""

import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib

# What `<cross gcc> --version` / `ld --version` would print on a RatOS Pi (Debian bookworm)
BUILD_VERSIONS = {
    "arm": "gcc: (15:12.2.rel1-1) 12.2.1 20221205 binutils: (2.40-2+18+b1) 2.40",
    "linux": "gcc: (Debian 12.2.0-14) 12.2.0 binutils: (GNU Binutils for Debian) 2.40",
    "avr": "gcc: (GCC) 5.4.0 binutils: (GNU Binutils) 2.26.20160125",
}
LINUX_LOAD_ADDRESS = 0x10000  # where ld places an armhf executable
RP2040_FLASH_BASE = 0x10000000
UF2_FAMILY_RP2040 = 0xE48BFF56

_DECL = re.compile(
    r'DECL_COMMAND(?:_FLAGS)?\(\s*\w+\s*,\s*(?:\w+\s*,\s*)?"(?P<command>[^"]+)"\s*\)'
    r'|sendf\(\s*"(?P<response>[^"]+)"'
    r'|DECL_CONSTANT\(\s*"(?P<const>\w+)"\s*,\s*(?P<const_value>[\w-]+)\s*\)'
    r'|DECL_CONSTANT_STR\(\s*"(?P<cstr>\w+)"\s*,\s*(?P<cstr_value>"[^"]*"|\w+)\s*\)'
    r'|DECL_ENUMERATION\(\s*"(?P<enum>\w+)"\s*,\s*"(?P<enum_key>[^"]+)"\s*,\s*(?P<enum_value>\d+)\s*\)'
    r'|DECL_ENUMERATION_RANGE\(\s*"(?P<range>\w+)"\s*,\s*"(?P<range_key>[^"]+)"\s*,'
    r'\s*(?P<range_start>\d+)\s*,\s*(?P<range_count>\d+)\s*\)'
)


class BuildError(Exception):
    pass


# ---------------------------------------------------------------- configuration

def read_config(path):
    """CONFIG_X=value lines as {X: str|int}; strings unquoted, ints and hex numbers as int."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = re.match(r"^CONFIG_(\w+)=(.*)$", line.rstrip("\n"))
            if not match:
                continue
            name, raw = match.groups()
            if raw.startswith('"'):
                values[name] = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            elif re.match(r"^-?(0x[0-9a-fA-F]+|\d+)$", raw):
                values[name] = int(raw, 0)
            else:
                values[name] = raw
    return values


def arch_of(config):
    for symbol, arch in (("MACH_STM32", "arm"), ("MACH_RPXXXX", "arm"),
                         ("MACH_LINUX", "linux"), ("MACH_AVR", "avr")):
        if config.get(symbol) == "y":
            return arch
    raise BuildError("no architecture selected in the configuration (run make olddefconfig)")


# ---------------------------------------------------------------- version (as buildcommands.py)

def _output(argv):
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    except OSError:
        return ""
    return proc.stdout.decode("utf-8", "replace").strip() if proc.returncode == 0 else ""


def build_version():
    version = ""
    clean = True
    if os.path.exists(".git"):
        version = _output(["git", "describe", "--always", "--tags", "--long", "--dirty"])
    if not version:
        clean = False
        if os.path.exists("klippy/.version"):
            with open("klippy/.version", encoding="utf-8") as handle:
                version = handle.read().strip()
        version = version or "?"
    elif "dirty" in version:
        clean = False
    if not clean:
        version = "%s-%s-%s" % (version, time.strftime("%Y%m%d_%H%M%S"), socket.gethostname())
    return version


# ---------------------------------------------------------------- data dictionary

def _config_value(token, config):
    if token.startswith("CONFIG_"):
        name = token[len("CONFIG_"):]
        if name not in config:
            raise BuildError("'%s' undeclared (is it set in the configuration?)" % token)
        return config[name]
    if token.startswith('"'):
        return token[1:-1]
    return int(token, 0)


def parse_declarations(sources, config):
    commands, responses, constants, enumerations = [], [], {}, {}
    for source in sources:
        with open(os.path.join("src", source), encoding="utf-8") as handle:
            text = handle.read()
        for match in _DECL.finditer(text):
            group = match.groupdict()
            if group["command"]:
                commands.append(group["command"])
            elif group["response"]:
                responses.append(group["response"])
            elif group["const"]:
                constants[group["const"]] = _config_value(group["const_value"], config)
            elif group["cstr"]:
                constants[group["cstr"]] = str(_config_value(group["cstr_value"], config))
            elif group["enum"]:
                enumerations.setdefault(group["enum"], {})[group["enum_key"]] = int(group["enum_value"])
            elif group["range"]:
                enumerations.setdefault(group["range"], {})[group["range_key"]] = [
                    int(group["range_start"]), int(group["range_count"])]
    return commands, responses, constants, enumerations


def assign_ids(commands, responses):
    """identify_response is 0 and identify is 1 as in Klipper; the rest in sorted order."""
    fixed = {"identify_response offset=%u data=%.*s": 0, "identify offset=%u count=%c": 1}
    ids = dict(fixed)
    for message in sorted(set(commands) | set(responses)):
        if message not in ids:
            ids[message] = len(ids)
    return ({m: ids[m] for m in set(commands)}, {m: ids[m] for m in set(responses)})


def cmd_dict(config_path, dict_path, *sources):
    config = read_config(config_path)
    out = dict_path[: -len("klipper.dict")]
    for source in sources:
        print("  Compiling %ssrc/%s.o" % (out, source[:-2]))
    print("  Building %scompile_time_request.o" % out)
    commands, responses, constants, enumerations = parse_declarations(sources, config)
    command_ids, response_ids = assign_ids(commands, responses)
    version = build_version()
    print("Version: %s" % version)
    data = {
        "app": "Klipper",
        "build_versions": BUILD_VERSIONS[arch_of(config)],
        "commands": command_ids,
        "config": constants,
        "enumerations": enumerations,
        "license": "GNU GPLv3",
        "responses": response_ids,
        "version": version,
    }
    with open(dict_path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, separators=(",", ":"), sort_keys=True))


# ---------------------------------------------------------------- image and ELF

RESET_MARK = b"KRST"


def filler(seed, length):
    """sha256-chain bytes; never containing 78 DA nor the reset handler's mark."""
    blocks, block = [], hashlib.sha256(seed).digest()
    while len(blocks) * 32 < length:
        blocks.append(block)
        block = hashlib.sha256(block + seed).digest()
    return b"".join(blocks)[:length].replace(b"\x78\xda", b"\x78\xdb").replace(RESET_MARK, b"KRSU")


def build_image(config, config_text, dict_bytes, app):
    """(image, reset handler address with the thumb bit)."""
    info = json.loads(dict_bytes)
    mcu = str(info["config"].get("MCU", "?"))
    ram_top = config.get("RAM_START", 0x20000000) + config.get("RAM_SIZE", 0)
    # 40..48 KiB of "code", stable per MCU, so that images have realistic and distinct sizes, and
    # the reset handler 30-32 KiB in, as in real images (so 0 and 8 KiB offsets both put it inside)
    salt = hashlib.sha256(mcu.encode()).digest()
    code_size = 40 * 1024 + (salt[0] % 9) * 1024
    handler = 30 * 1024 + (salt[1] % 8) * 256
    seed = b"klipper-stand-in\0" + info["version"].encode() + b"\0" + config_text.encode()
    code = bytearray(struct.pack("<II", ram_top, app + handler + 1) + filler(seed, code_size - 8))
    code[handler:handler + 8] = RESET_MARK + struct.pack("<I", app + handler)
    image = bytes(code) + zlib.compress(dict_bytes, 9)
    return image + b"\0" * (-len(image) % 8), app + handler + 1


def write_elf(path, machine, flags, entry, segments, debug=b"", build_id=False, elf_class=1):
    """ELF32 or ELF64 (``elf_class`` 2): the segments, then a GNU build-id note (if asked) and the
    debug strings, with a section table naming .debug_str as a linker writes it."""
    wide = elf_class == 2
    header_size, phdr_size, shdr_size = (64, 56, 64) if wide else (52, 32, 40)
    phdr = (lambda t, off, addr, size, fl, al: struct.pack("<IIQQQQQQ", t, fl, off, addr, addr, size, size, al)) \
        if wide else (lambda t, off, addr, size, fl, al: struct.pack("<IIIIIIII", t, off, addr, addr, size, size, fl, al))
    shdr = (lambda name, t, fl, off, size, al: struct.pack("<IIQQQQIIQQ", name, t, fl, 0, off, size, 0, 0, al, 1 if fl else 0)) \
        if wide else (lambda name, t, fl, off, size, al: struct.pack("<IIIIIIIIII", name, t, fl, 0, off, size, 0, 0, al, 1 if fl else 0))
    phnum = len(segments) + (1 if build_id else 0)
    offset = header_size + phdr_size * phnum
    phdrs, payload = b"", b""
    for address, data in segments:
        phdrs += phdr(1, offset + len(payload), address, len(data), 5, 4)
        payload += data + b"\0" * (-len(data) % 4)
    note_at = offset + len(payload)
    note = struct.pack("<III", 4, 20, 3) + b"GNU\0" + b"\0" * 20 if build_id else b""
    if build_id:
        phdrs += phdr(4, note_at, 0, len(note), 4, 4)
    debug += b"\0" * (-len(debug) % 4)
    names = b"\0.debug_str\0.shstrtab\0"
    names += b"\0" * (-len(names) % 4)
    debug_at = note_at + len(note)
    names_at = debug_at + len(debug)
    shoff = names_at + len(names)
    shoff += -shoff % 8
    sections = b"\0" * shdr_size + shdr(1, 1, 0x30, debug_at, len(debug), 1) + shdr(12, 3, 0, names_at, len(names), 1)
    ident = b"\x7fELF" + bytes([elf_class, 1, 1, 0]) + b"\0" * 8
    layout = "<16sHHIQQQIHHHHHH" if wide else "<16sHHIIIIIHHHHHH"
    header = struct.pack(layout, ident, 2, machine, 1, entry, header_size, shoff, flags,
                         header_size, phdr_size, phnum, shdr_size, 3, 2)
    body = header + phdrs + payload + note + debug + names
    data = bytearray(body + b"\0" * (shoff - len(body)) + sections)
    if build_id:
        data[note_at + 16:note_at + 36] = hashlib.sha1(bytes(data)).digest()
    with open(path, "wb") as handle:
        handle.write(bytes(data))


# What a Linux build's compiler makes: CROSS_PREFIX (Klipper's Makefile: CC=$(CROSS_PREFIX)gcc)
# names Debian's cross compiler; without it the machine's own gcc builds for `uname -m`.
# (load address, e_machine, ELF class, e_flags)
LINUX_TARGETS = {
    "arm-linux-gnueabihf-": (LINUX_LOAD_ADDRESS, 40, 1, 0x05000400),
    "aarch64-linux-gnu-": (0x400000, 183, 2, 0),
    "x86_64-linux-gnu-": (0x400000, 62, 2, 0),
}
NATIVE_PREFIX = {"armv7l": "arm-linux-gnueabihf-", "armv8l": "arm-linux-gnueabihf-",
                 "aarch64": "aarch64-linux-gnu-", "x86_64": "x86_64-linux-gnu-"}


def linux_target():
    prefix = os.environ.get("CROSS_PREFIX", "")
    if not prefix:
        machine = _output(["uname", "-m"]) or os.uname().machine  # a virtual Pi's stand-in answers
        prefix = NATIVE_PREFIX.get(machine, "")
    if prefix not in LINUX_TARGETS:
        raise BuildError("%sgcc: not found" % (prefix or "gcc for %s " % os.uname().machine))
    return LINUX_TARGETS[prefix]


def read_elf_segments(path):
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] != b"\x7fELF" or data[4] != 1:
        raise BuildError("%s is not an ELF32 file" % path)
    phoff, phnum = struct.unpack_from("<I", data, 28)[0], struct.unpack_from("<H", data, 44)[0]
    segments = []
    for index in range(phnum):
        p_type, p_offset, _vaddr, p_paddr, p_filesz = struct.unpack_from("<IIIII", data, phoff + 32 * index)
        if p_type == 1 and p_filesz:
            segments.append((p_paddr, data[p_offset:p_offset + p_filesz]))
    return sorted(segments)


def flat(segments):
    base = segments[0][0]
    image = bytearray()
    for address, data in segments:
        image += b"\0" * (address - base - len(image))
        image += data
    return base, bytes(image)


def stage2():
    """256-byte RP2040 boot stage 2 stand-in: 252 bytes of code and a CRC32."""
    body = filler(b"boot2_w25q080", 252)
    return body + struct.pack("<I", zlib.crc32(body))


def cmd_link(config_path, dict_path, elf_path):
    config = read_config(config_path)
    with open(config_path, encoding="utf-8") as handle:
        config_text = handle.read()
    with open(dict_path, "rb") as handle:
        dict_bytes = handle.read()
    arch = arch_of(config)
    elf_class = 1
    if arch == "linux":
        app, machine, elf_class, flags = linux_target()
    elif arch == "avr":
        app, machine, flags = 0, 83, 0
    else:
        app, machine, flags = config["FLASH_APPLICATION_ADDRESS"], 40, 0x05000200
    image, reset = build_image(config, config_text, dict_bytes, app)
    segment = (app, image)
    if config.get("RP2040_HAVE_STAGE2") == "y":
        # no bootloader: the flash starts with boot stage 2, the application follows it
        segment = (RP2040_FLASH_BASE, stage2() + b"\0" * (app - RP2040_FLASH_BASE - 256) + image)
    # what -ggdb3 leaves in the ELF: the compilation directory and the output directory
    debug = ("DW_AT_comp_dir=%s\0DW_AT_name=%s\0" % (os.getcwd(), os.path.abspath(elf_path))).encode()
    write_elf(elf_path, machine, flags, reset if arch != "avr" else 0, [segment], debug,
              build_id=arch == "linux", elf_class=elf_class)


def cmd_bin(elf_path, bin_path):
    _base, image = flat(read_elf_segments(elf_path))
    with open(bin_path, "wb") as handle:
        handle.write(image)


def cmd_uf2(elf_path, uf2_path):
    base, image = flat(read_elf_segments(elf_path))
    image = b"\0" * (base % 256) + image
    base -= base % 256
    chunks = [image[i:i + 256] for i in range(0, len(image), 256)]
    blocks = []
    for number, chunk in enumerate(chunks):
        chunk += b"\0" * (256 - len(chunk))
        head = struct.pack("<IIIIIIII", 0x0A324655, 0x9E5D5157, 0x00002000, base + 256 * number,
                           256, number, len(chunks), UF2_FAMILY_RP2040)
        blocks.append(head + chunk + b"\0" * (476 - 256) + struct.pack("<I", 0x0AB16F30))
    with open(uf2_path, "wb") as handle:
        handle.write(b"".join(blocks))


def _hex_record(kind, address, data):
    body = bytes([len(data), (address >> 8) & 0xFF, address & 0xFF, kind]) + data
    return ":%s%02X\n" % (body.hex().upper(), (-sum(body)) & 0xFF)


def cmd_hex(elf_path, hex_path):
    base, image = flat(read_elf_segments(elf_path))
    lines, upper = [], None
    for offset in range(0, len(image), 16):
        address = base + offset
        if address >> 16 != upper:
            upper = address >> 16
            lines.append(_hex_record(4, 0, struct.pack(">H", upper)))
        lines.append(_hex_record(0, address & 0xFFFF, image[offset:offset + 16]))
    lines.append(_hex_record(1, 0, b""))
    with open(hex_path, "w", encoding="ascii") as handle:
        handle.writelines(lines)


COMMANDS = {"dict": cmd_dict, "link": cmd_link, "bin": cmd_bin, "uf2": cmd_uf2, "hex": cmd_hex}


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        sys.stderr.write("usage: fakebuild.py {%s} ARGS...\n" % ",".join(COMMANDS))
        return 2
    try:
        COMMANDS[argv[1]](*argv[2:])
    except (BuildError, KeyError, OSError) as error:
        sys.stderr.write("fakebuild: error: %s\n" % (error,))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
