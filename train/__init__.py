"""ppfr.train"""
