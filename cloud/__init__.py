"""ppfr.cloud"""
