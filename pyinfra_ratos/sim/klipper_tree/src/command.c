// Command parsing and the identify handshake.
// Stand-in source: only the declarations the data dictionary is built from.

DECL_COMMAND_FLAGS(command_identify, HF_IN_SHUTDOWN, "identify offset=%u count=%c");
// reply: sendf("identify_response offset=%u data=%.*s", offset, count, data);
DECL_CONSTANT("STATS_SUMSQ_BASE", 256);
DECL_ENUMERATION("static_string_id", "Command parser error", 1);
DECL_ENUMERATION("static_string_id", "Shutdown cleared when not shutdown", 2);
