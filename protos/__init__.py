"""ppfr.protos"""
