"""ppfr.edge"""
