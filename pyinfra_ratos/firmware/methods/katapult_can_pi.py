# The katapult-can method's Pi side (pyinfra_ratos.firmware.methods.katapult_can): appended to the
# printer agent after the Katapult client (katapult.py, katapult_stream.py), the katapult method's
# runner helpers (katapult_pi.py: the start-address check, keep-then-write with read-back) and the
# CAN bus code (canbus.py); it uses the agent's Runner, RUNNERS, StepFailed and Interrupted.
# Stdlib only.

CAN_REQUEST_SETTLE_S = 1.0   # flashtool: after REQUEST_BOOTLOADER, before anything else
CAN_NODEID_SETTLE_S = 0.5    # flashtool: after CLEAR and after SET_CANBOOT_NODEID
CAN_UP_WAIT_S = 15.0


def can_katapult_enter(agent, interface, uuid, request):
    """Katapult on node ``uuid``, spoken to as flashtool does; StepFailed when it does not answer."""
    can_wait_up(interface, CAN_UP_WAIT_S)  # after a bridge's reset its interface comes back first
    try:
        bus = CanBus(can_open(interface))
    except CanError as error:
        raise StepFailed("CAN interface {}: {}".format(interface, error)) from None
    try:
        if request:
            bus.request_bootloader(uuid)  # a node already in Katapult ignores it
            time.sleep(CAN_REQUEST_SETTLE_S)
        bus.admin(can_clear_katapult_message())
        time.sleep(CAN_NODEID_SETTLE_S)
        bus.admin(can_set_katapult_nodeid_message(uuid))
        time.sleep(CAN_NODEID_SETTLE_S)
        client = KatapultStream(CanStream(bus, CAN_KATAPULT_NODEID), "CAN node {} on {}".format(uuid, interface),
                                agent.log)
        client.open()
        info = client.connect()
        found = client.canbus_id()
    except KatapultError as error:
        bus.close()
        raise StepFailed("CAN node {} on {} did not answer in Katapult ({}): is it powered and wired, and does "
                         "it have Katapult?".format(uuid, interface, error)) from None
    except BaseException:
        bus.close()
        raise
    if found != uuid:
        bus.close()
        raise StepFailed("Katapult on {} answered as node {}, not {}".format(interface, found, uuid))
    agent.log.append("Katapult {} (protocol {}) on CAN node {}: {} bytes per block, applications at {:#010x}".format(
        info["version"], info["protocol"], uuid, info["block_size"], info["start"]))
    return bus, client


class KatapultCanRunner(Runner):
    """Katapult over CAN: request it, check it, keep the old application, write and read back
    (one retry), COMPLETE. Klipper's report of the new version is the agent's Verify."""

    def flash(self, agent, board, record):
        steps = {step["step"]: step for step in board["steps"]}
        write = steps["KatapultCanWrite"]
        interface, uuid = write["interface"], write["uuid"]
        record["backend"] = "katapult-can"
        bus, client = can_katapult_enter(agent, interface, uuid, "CanEnterKatapult" in steps)
        try:
            wrong = katapult_refusal(client.info, write, "CAN node {}".format(uuid))
            if wrong:
                record["notes"].append("refused before writing anything; the node was sent back to its firmware")
                client.complete()
                raise StepFailed(wrong)
            katapult_replace(agent, client, write, record, "can-{}.bin".format(uuid))
            client.complete()
        except KatapultError as error:
            raise StepFailed("Katapult on CAN node {}: {}".format(uuid, error)) from None
        finally:
            bus.close()

    def restore(self, agent, board, record):
        steps = {step["step"]: step for step in board["steps"]}
        write = steps["KatapultCanWrite"]
        interface, uuid = write["interface"], write["uuid"]
        if not record.get("capture"):
            return ("no copy of the firmware {} ran could be read: flash it by hand through Katapult over CAN "
                    "(node {} on {}), or fix the fault and rerun".format(board["board"], uuid, interface))
        try:
            bus, client = can_katapult_enter(agent, interface, uuid, True)
            try:
                with open(record["capture"], "rb") as handle:
                    katapult_write_verified(agent, client, handle.read(), {"notes": []})
                client.complete()
            except KatapultError as error:
                raise StepFailed(str(error)) from None
            finally:
                bus.close()
        except (StepFailed, Interrupted) as failed:
            return ("{} (CAN node {} on {}) could not be given back its old firmware ({}): power-cycle the "
                    "toolboard, then rerun the update".format(board["board"], uuid, interface, failed))
        return None


RUNNERS["katapult-can"] = KatapultCanRunner()
