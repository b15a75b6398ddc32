// Linux process timer (clock_gettime based).

DECL_CONSTANT("CLOCK_FREQ", CONFIG_CLOCK_FREQ);
