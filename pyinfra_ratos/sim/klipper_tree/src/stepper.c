// Stepper pulse generation.

DECL_COMMAND(command_config_stepper,
             "config_stepper oid=%c step_pin=%c dir_pin=%c invert_step=%c step_pulse_ticks=%u");
DECL_COMMAND(command_queue_step, "queue_step oid=%c interval=%u count=%hu add=%hi add2=%hi");
DECL_COMMAND(command_set_next_step_dir, "set_next_step_dir oid=%c dir=%c");
DECL_COMMAND(command_reset_step_clock, "reset_step_clock oid=%c clock=%u");
DECL_COMMAND(command_stepper_get_position, "stepper_get_position oid=%c");
// reply: sendf("stepper_position oid=%c pos=%i", oid, position);
DECL_COMMAND(command_stepper_stop_on_trigger, "stepper_stop_on_trigger oid=%c trsync_oid=%c");
