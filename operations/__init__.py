"""pyinfra_ratos.operations"""
