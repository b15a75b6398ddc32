// CAN bus transport.

DECL_CONSTANT("CANBUS_FREQUENCY", CONFIG_CANBUS_FREQUENCY);
DECL_COMMAND_FLAGS(command_get_canbus_id, HF_IN_SHUTDOWN, "get_canbus_id");
// reply: sendf("canbus_id canbus_uuid=%.*s", 6, uuid);
