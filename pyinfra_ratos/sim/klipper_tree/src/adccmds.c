// Analog input sampling.

DECL_COMMAND(command_config_analog_in, "config_analog_in oid=%c pin=%u");
DECL_COMMAND(command_query_analog_in,
             "query_analog_in oid=%c clock=%u sample_ticks=%u sample_count=%c rest_ticks=%u min_value=%hu max_value=%hu range_check_count=%c");
// reply: sendf("analog_in_state oid=%c next_clock=%u value=%hu", ...);
