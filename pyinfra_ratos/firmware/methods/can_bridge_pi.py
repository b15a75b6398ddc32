# The can-bridge method's Pi side (pyinfra_ratos.firmware.methods.can_bridge): appended to the printer
# agent after canbus.py; it uses the agent's Runner, RUNNERS, DfuRunner, StepFailed, Interrupted and
# usb_id. Stdlib only.

CAN_BRIDGE_ID = ("1d50", "606f")
USB_STATES[CAN_BRIDGE_ID] = "running as a USB-to-CAN bridge"


def can_bridge_request(agent, interface, uuid, port):
    """REQUEST_BOOTLOADER to the bridge's own node: it resets and leaves USB (can0 goes with it)."""
    agent.app_ids[port] = CAN_BRIDGE_ID
    if usb_id(port) != CAN_BRIDGE_ID:
        return
    try:
        bus = CanBus(can_open(interface))
    except CanError as error:
        raise StepFailed("cannot ask the bridge on USB port {} for its bootloader: {}".format(port, error)) from None
    try:
        bus.request_bootloader(uuid)
    finally:
        bus.close()
    agent.log.append("bootloader request sent to the bridge's node {} on {}".format(uuid, interface))


def can_bridge_wait_up(agent, interface, port, timeout):
    state = can_wait_up(interface, timeout)
    if state.get("state") == "up":
        return
    raise StepFailed("the bridge is back on USB port {} but {} did not come back up within {:g} s ({}): bring it "
                     "up on hotplug (allow-hotplug {})".format(port, interface, timeout,
                                                               state.get("state") or "absent", interface))


class CanBridgeRunner(Runner):
    """The bridge: its bootloader asked for over CAN, then DfuSe or Katapult over USB as for any board
    (old firmware kept, read back, one retry), back as 1d50:606f, its CAN interface up."""

    dfu = DfuRunner()

    @staticmethod
    def usb_runner(board):
        """The runner writing the bridge once it is in its bootloader (Katapult's is shipped by the
        katapult method, DfuSe's is built in)."""
        if any(step["step"] == "KatapultWrite" for step in board["steps"]):
            return RUNNERS["katapult"]
        return CanBridgeRunner.dfu

    def flash(self, agent, board, record):
        steps = {step["step"]: step for step in board["steps"]}
        port = board.get("port")
        request, up = steps.get("CanRequestBridgeBootloader"), steps.get("WaitCanUp")
        agent.app_ids[port] = CAN_BRIDGE_ID
        if request:
            can_bridge_request(agent, request["interface"], request["uuid"], port)
        self.usb_runner(board).flash(agent, board, record)
        if up:
            can_bridge_wait_up(agent, up["interface"], port, float(up["timeout"]))

    def restore(self, agent, board, record):
        steps = {step["step"]: step for step in board["steps"]}
        port = board.get("port")
        request, up = steps.get("CanRequestBridgeBootloader"), steps.get("WaitCanUp")
        agent.app_ids[port] = CAN_BRIDGE_ID
        if record.get("capture") and request:
            try:
                if usb_id(port) == CAN_BRIDGE_ID and up:
                    can_bridge_wait_up(agent, up["interface"], port, float(up["timeout"]))
                can_bridge_request(agent, request["interface"], request["uuid"], port)
            except StepFailed as failed:
                return ("the bridge {} on USB port {} could not be asked for its bootloader ({}): power-cycle "
                        "the printer's board, then rerun the update".format(board["board"], port, failed))
        left = self.usb_runner(board).restore(agent, board, record)
        if left is None and up:
            try:
                can_bridge_wait_up(agent, up["interface"], port, float(up["timeout"]))
            except StepFailed as failed:
                return str(failed)
        return left


RUNNERS["can-bridge"] = CanBridgeRunner()
