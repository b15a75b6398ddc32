// Scheduler: timers, tasks and the shutdown path.

DECL_CONSTANT("MCU_QUEUE_SIZE", 8);
