"""pyinfra_ratos.deploys"""
