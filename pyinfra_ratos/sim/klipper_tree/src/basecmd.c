// Basic infrastructure commands: oids, config handshake, clocks, shutdown.

DECL_COMMAND(command_allocate_oids, "allocate_oids count=%c");
DECL_COMMAND_FLAGS(command_get_config, HF_IN_SHUTDOWN, "get_config");
// reply: sendf("config is_config=%c crc=%u is_shutdown=%c move_count=%hu", ...);
DECL_COMMAND(command_finalize_config, "finalize_config crc=%u");
DECL_COMMAND_FLAGS(command_get_clock, HF_IN_SHUTDOWN, "get_clock");
// reply: sendf("clock clock=%u", timer_read_time());
DECL_COMMAND_FLAGS(command_get_uptime, HF_IN_SHUTDOWN, "get_uptime");
// reply: sendf("uptime high=%u clock=%u", high, cur);
DECL_COMMAND_FLAGS(command_emergency_stop, HF_IN_SHUTDOWN, "emergency_stop");
DECL_COMMAND_FLAGS(command_clear_shutdown, HF_IN_SHUTDOWN, "clear_shutdown");
DECL_COMMAND_FLAGS(command_reset, HF_IN_SHUTDOWN, "reset");
// stats task: sendf("stats count=%u sum=%u sumsq=%u", ...);
// shutdown: sendf("shutdown clock=%u static_string_id=%hu", ...);
// sendf("is_shutdown static_string_id=%hu", ...);
