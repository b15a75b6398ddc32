# The katapult method's Pi side (pyinfra_ratos.firmware.methods.katapult): appended to the printer
# agent after the protocol client (pyinfra_ratos/firmware/katapult.py); it uses the agent's Runner,
# RUNNERS, USB_STATES, usb_state, StepFailed, usb_id, tty_of and Agent helpers. Stdlib only.

KATAPULT_ID = ("1d50", "6177")
KATAPULT_RESTORE_TIMEOUT_S = 10.0
USB_STATES[KATAPULT_ID] = "in its Katapult bootloader"


def katapult_needs_prime(port):
    """flashtool primes STM32s with double-buffered USB (not F2/F4/H7) with an invalid command."""
    try:
        with open(f"{SYSFS_USB}/{port}/product", encoding="ascii") as handle:
            product = handle.read().strip().lower()
    except OSError:
        return False
    return product.startswith("stm32") and product[5:7] not in ("f2", "f4", "h7")


def katapult_refusal(info, write, where):
    """Why Katapult at ``where`` (CONNECT's ``info``) must not be given the step's image, or None."""
    if info["start"] != write["address"]:
        return ("Katapult on {} starts applications at {:#010x}, the image is linked for {:#010x} (a Katapult "
                "built for another offset; writing would overwrite the bootloader or not boot)".format(
                    where, info["start"], write["address"]))
    if info["mcu"] and write.get("mcu") and info["mcu"] != write["mcu"]:
        return "Katapult on {} is for MCU {}, the image for {}".format(where, info["mcu"], write["mcu"])
    return None


def katapult_write_verified(agent, client, image, record):
    """Write and read back (flashtool's SHA-1 compare); one more write when the read-back differs."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        agent.transfer("write", 0, len(image), start=True)
        sent = client.write(image)
        agent.transfer("write", len(image), len(image))
        agent.note_phase("read back and compare")
        try:
            client.verify(image, sent)
        except KatapultError as error:
            record["read_back"] = False
            if attempt == WRITE_ATTEMPTS:
                raise
            record["notes"].append("the first write read back wrong ({}); wrote it again".format(error))
            continue
        record["read_back"] = True
        return


def katapult_replace(agent, client, write, record, scratch_name):
    """Keep what the board runs (REQUEST_BLOCK reads, up to the step's ``capture_length``), then
    write the step's image with read-back."""
    if write.get("capture_length"):
        agent.note_phase("reading the firmware it ran (up to {} bytes, kept for a rollback)".format(
            write["capture_length"]))
        kept = client.read_application(int(write["capture_length"]))
        if kept:
            dest = agent.scratch(scratch_name)
            with open(dest, "wb") as handle:
                handle.write(kept)
            record["capture"] = dest
    with open(agent.path(write["image"]), "rb") as handle:
        image = handle.read()
    record["written"] = True
    katapult_write_verified(agent, client, image, record)


class KatapultRunner(Runner):
    """Katapult over USB: request it, check its application start, keep a read of the old
    application, write and read back (flashtool's SHA-1 compare, one retry), leave, wait for Klipper."""

    def enter(self, agent, port, timeout, tty=None):
        agent.enter_mode(port, KATAPULT_ID, "Katapult", timeout, tty)
        deadline = time.monotonic() + 2.0  # the tty appears just after the device itself
        while not tty_of(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        tty = tty_of(port)
        if not tty:
            raise StepFailed(f"Katapult on USB port {port} has no tty")
        client = KatapultSerial(tty, agent.log)
        try:
            client.open()
            if katapult_needs_prime(port):
                client.prime()
            info = client.connect()
        except KatapultError as error:
            client.close()
            raise StepFailed(f"Katapult on USB port {port}: {error}") from None
        agent.log.append("Katapult {} (protocol {}) on {}: {} bytes per block, applications at {:#010x}".format(
            info["version"], info["protocol"], info["mcu"], info["block_size"], info["start"]))
        return client

    def leave(self, agent, client, port, timeout):
        try:
            client.complete()
        except KatapultError as error:
            raise StepFailed(f"Katapult on USB port {port} did not take COMPLETE: {error}") from None
        finally:
            client.close()
        agent.wait_klipper(port, timeout)

    def flash(self, agent, board, record):
        steps = {step["step"]: step for step in board["steps"]}
        write = steps["KatapultWrite"]
        port = board.get("port") or write["port"]
        wait_klipper = float(steps.get("WaitKlipper", {"timeout": 30})["timeout"])
        record["backend"] = "katapult"
        client = self.enter(agent, port, float(steps.get("WaitKatapult", {"timeout": 10})["timeout"]),
                            (steps.get("RequestBootloader") or {}).get("tty"))
        wrong = katapult_refusal(client.info, write, f"USB port {port}")
        if wrong:
            record["notes"].append("refused before writing anything; the board was sent back to its firmware")
            try:
                self.leave(agent, client, port, wait_klipper)
            except StepFailed as failed:
                wrong += f"; then {failed}"
            raise StepFailed(wrong)
        try:
            katapult_replace(agent, client, write, record, f"{port}.bin")
        except KatapultError as error:
            client.close()
            raise StepFailed(f"Katapult on USB port {port}: {error}") from None
        except BaseException:
            client.close()
            raise
        self.leave(agent, client, port, wait_klipper)

    def restore(self, agent, board, record):
        port = board.get("port")
        if not record.get("capture"):
            return (f"no copy of the firmware {board['board']} ran could be read: flash it by hand through Katapult "
                    f"on USB port {port} (it is {usb_state(port)}), or fix the fault and rerun")
        try:
            client = self.enter(agent, port, KATAPULT_RESTORE_TIMEOUT_S)
            try:
                with open(record["capture"], "rb") as handle:
                    katapult_write_verified(agent, client, handle.read(), {"notes": []})
            except KatapultError as error:
                client.close()
                raise StepFailed(str(error)) from None
            self.leave(agent, client, port, 30.0)
        except (StepFailed, Interrupted) as failed:
            return (f"{board['board']} on USB port {port} is {usb_state(port)} and could not be given back its "
                    f"old firmware ({failed}): power-cycle the printer's board, then rerun the update")
        return None


RUNNERS["katapult"] = KatapultRunner()
