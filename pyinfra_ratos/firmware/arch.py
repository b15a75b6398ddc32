"""CPU architectures a Linux host MCU (``klipper_mcu``) is built for, and how to tell them apart.

A Raspberry Pi runs either a 32-bit ARM hard-float userland (Raspberry Pi OS armhf, ``uname -m``
``armv7l``, or ``aarch64`` when the 32-bit OS boots the 64-bit kernel, as it does by default on a
Pi 4/5) or a 64-bit one (arm64, ``aarch64``). The binary must match the *userland*: the probe
reports ``uname -m`` and the pointer size of the Pi's own python3, and :func:`userland_arch`
decides. The controller builds for it with Debian's cross compiler (``CROSS_PREFIX`` of Klipper's
Makefile; on Debian the native gcc answers to its triplet name too). Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass

EM_ARM, EM_AARCH64, EM_X86_64 = 40, 183, 62
EF_ARM_ABI_FLOAT_HARD = 0x400  # armhf: the VFP register calling convention


@dataclass(frozen=True)
class Arch:
    name: str            # Debian's architecture name, also the identity's suffix
    elf_machine: int     # e_machine of its executables
    elf_class: int       # 1 = 32-bit, 2 = 64-bit
    cross_prefix: str    # Klipper's CROSS_PREFIX (Debian's triplet)
    package: str         # the Debian package with that compiler

    @property
    def bits(self) -> int:
        return 32 if self.elf_class == 1 else 64


ARCHES = {
    "armhf": Arch("armhf", EM_ARM, 1, "arm-linux-gnueabihf-", "gcc-arm-linux-gnueabihf"),
    "aarch64": Arch("aarch64", EM_AARCH64, 2, "aarch64-linux-gnu-", "gcc-aarch64-linux-gnu"),
}
_MACHINE_NAMES = {EM_ARM: "ARM (32-bit)", EM_AARCH64: "AArch64", EM_X86_64: "x86-64", 3: "i386"}


def userland_arch(machine: str, pointer_bits: int | None) -> str | None:
    """The architecture programs on the Pi are built for, from ``uname -m`` and python3's pointer
    size; None when it is not one a Klipper host MCU is built for here."""
    if machine in ("armv7l", "armv8l"):
        return "armhf"  # armv6l (Pi 1/Zero): Debian's armhf compiler targets ARMv7, not it
    if machine in ("aarch64", "arm64"):
        return "armhf" if pointer_bits == 32 else "aarch64"
    return None


def machine_name(elf_machine: int | None, elf_class: int | None = None) -> str:
    name = _MACHINE_NAMES.get(elf_machine or -1, f"machine {elf_machine}")
    return name if elf_class is None else f"{name}, ELF{32 if elf_class == 1 else 64}"


def elf_fits(arch: str, elf_machine: int | None, elf_class: int | None, elf_flags: int | None) -> str | None:
    """Why an ELF with these header fields does not run on ``arch``; None when it does."""
    target = ARCHES.get(arch)
    if target is None:
        return f"no host MCU is built for architecture {arch!r} (known: {', '.join(ARCHES)})"
    if (elf_machine, elf_class) != (target.elf_machine, target.elf_class):
        return (f"the ELF is {machine_name(elf_machine, elf_class)}, the Pi runs {arch} "
                f"({machine_name(target.elf_machine, target.elf_class)}): it would not start")
    if arch == "armhf" and not (elf_flags or 0) & EF_ARM_ABI_FLOAT_HARD:
        return "the ELF is soft-float ARM (armel), the Pi runs armhf: it would not load"
    return None
