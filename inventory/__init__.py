"""pyinfra_ratos.inventory"""
