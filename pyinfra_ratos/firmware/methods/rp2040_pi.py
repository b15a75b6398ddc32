# The rp2040 method's Pi side (pyinfra_ratos.firmware.methods.rp2040): appended to the printer agent;
# it uses the agent's Runner, RUNNERS, USB_STATES, usb_state, Pyusb, StepFailed, Interrupted and
# Agent helpers. The PICOBOOT client itself runs from the pyusb client venv (it needs pyusb).

BOOTSEL_ID = ("2e8a", "0003")
BOOTSEL_RESTORE_TIMEOUT_S = 10.0
PICOBOOT_FLASH_START = 0x10000000
USB_STATES[BOOTSEL_ID] = "in BOOTSEL"


class PicobootClient(Pyusb):
    """``python -m pyinfra_ratos.firmware.picoboot``: writes a UF2 (or a kept flat image) with
    read-back, then reboots; reads the old flash until an erased 64 KiB chunk."""

    name = "rp2040"  # what the report's record says wrote the board: the method's name
    module, label, mode = "pyinfra_ratos.firmware.picoboot", "PICOBOOT client", "BOOTSEL"
    read_args = ("--until-erased",)

    def write_args(self):
        return ()


class Rp2040Runner(Runner):
    """RP2040 in BOOTSEL: request it, keep the old flash, write with read-back (one retry), reboot,
    wait for Klipper on the same port."""

    @staticmethod
    def client(agent, board):
        write = next(step for step in board["steps"] if step["step"] == "PicobootWrite")
        port = board.get("port") or write["port"]
        return PicobootClient(agent, {**write, "port": port, "address": PICOBOOT_FLASH_START}), write, port

    def flash(self, agent, board, record):
        steps = {step["step"]: step for step in board["steps"]}
        client, write, port = self.client(agent, board)
        record["backend"] = client.name
        agent.enter_mode(port, BOOTSEL_ID, "BOOTSEL", float(steps.get("WaitBootsel", {"timeout": 10})["timeout"]),
                         (steps.get("RequestBootloader") or {}).get("tty"))
        agent.keep_firmware(client, port, int(write.get("capture_limit") or 0), record)
        record["written"] = True
        agent.write_with_retry(client, agent.path(write["image"]), record)
        agent.wait_klipper(port, float(steps.get("WaitKlipper", {"timeout": 30})["timeout"]))

    def restore(self, agent, board, record):
        client, _write, port = self.client(agent, board)
        if not record.get("capture"):
            return (f"no copy of the firmware {board['board']} ran could be read: hold BOOTSEL while plugging it in "
                    f"and copy a klipper.uf2 to it by hand (USB port {port}, {usb_state(port)}), or fix the fault "
                    "and rerun")
        try:
            agent.enter_mode(port, BOOTSEL_ID, "BOOTSEL", BOOTSEL_RESTORE_TIMEOUT_S)
            agent.write_with_retry(client, record["capture"], {"notes": []})
            agent.wait_klipper(port, 30.0)
        except (StepFailed, Interrupted) as failed:
            return (f"{board['board']} on USB port {port} is {usb_state(port)} and could not be given back its "
                    f"old firmware ({failed}): power-cycle the printer's board, then rerun the update")
        return None


RUNNERS["rp2040"] = Rp2040Runner()
