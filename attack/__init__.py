"""ppfr.attack"""
