"""ppfr.bench"""
