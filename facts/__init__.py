"""pyinfra_ratos.facts"""
