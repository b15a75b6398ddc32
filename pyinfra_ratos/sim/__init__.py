"""The virtual RatOS farm: namespaced Pis with real sshd, a Moonraker stand-in and emulated boards."""
