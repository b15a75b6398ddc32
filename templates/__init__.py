"""pyinfra_ratos.templates"""
