"""ppfr.export"""
